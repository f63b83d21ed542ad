"""make_plan: budgets honoured, constraints honoured, impossible budgets explained."""
from __future__ import annotations

import copy

import pytest

from llm_quantizer.errors import BudgetError, ConfigError
from llm_quantizer.formats import default_candidates, get_format
from llm_quantizer.plan import Constraints, Plan, make_plan
from llm_quantizer.plan.synthetic import Shape, make_measurements

GGUF = default_candidates("gguf")
INT = default_candidates("int")
SHAPE = Shape(num_layers=8, hidden=1024, intermediate=2816, n_heads=16, n_kv_heads=4, vocab=8192)


@pytest.fixture(scope="module")
def gguf_meas():
    return make_measurements(SHAPE, GGUF, seed=3)


@pytest.mark.parametrize("budget", ["0.25", "0.3", "4.5bpw", "5.5bpw"])
def test_plan_fills_budget(gguf_meas, budget):
    plan = make_plan(gguf_meas, budget, GGUF)
    t = plan.totals
    assert t.bytes <= t.budget_bytes and t.bytes >= 0.99 * t.budget_bytes
    assert t.dual_bound <= t.lower_bound <= t.predicted_error + 1e-9
    assert sum(x.bytes for x in plan.tensors) + t.overhead_bytes == t.bytes
    assert len(plan.tensors) == len(gguf_meas["tensors"])
    for x in plan.tensors:
        assert x.bytes == get_format(x.format).nbytes(x.shape)


def test_norms_fixed_and_super_weight_floor(gguf_meas):
    plan = make_plan(gguf_meas, "0.2", GGUF, Constraints(super_weight_min_bits=6.0))
    for x in plan.tensors:
        if x.kind == "norm":
            assert (x.format, x.reason, x.bytes) == ("F32", "not quantizable", 4 * x.numel)
    sw = [x for x in plan.tensors if x.name == "model.layers.1.mlp.down_proj.weight"][0]
    assert sw.bits_per_weight >= 6.0 and sw.reason == "super-weight floor"


def test_keep_pattern_and_min_embed_bits(gguf_meas):
    cons = Constraints(keep=(("lm_head", "Q8_0"),), min_embed_bits=6.5)
    plan = make_plan(gguf_meas, "0.3", GGUF, cons).by_name()
    assert plan["lm_head.weight"].format == "Q8_0" and plan["lm_head.weight"].reason == "kept by pattern"
    emb = plan["model.embed_tokens.weight"]
    assert emb.bits_per_weight >= 6.5 and emb.reason in ("min embedding bits", "knapsack")
    by_gguf = make_plan(gguf_meas, "0.3", GGUF, Constraints(keep=((r"^blk\.0\.", "F16"),)))
    kept = [x for x in by_gguf.tensors if x.layer == 0 and x.kind != "norm"]
    assert kept and all(x.format == "F16" and x.reason == "kept by pattern" for x in kept)


def test_impossible_budgets_are_one_line(gguf_meas):
    for budget in ("1MB", "1.5bpw"):
        with pytest.raises(BudgetError) as e:
            make_plan(gguf_meas, budget, GGUF)
        msg = str(e.value)
        assert "achievable range is" in msg and "MB" in msg and "\n" not in msg
    with pytest.raises(BudgetError, match="above the original"):
        make_plan(gguf_meas, f"{2 * gguf_meas['model']['original_bytes']}", GGUF)


def test_row_length_fallback_is_priced():
    meas = make_measurements(Shape(num_layers=2, hidden=576, intermediate=1536, n_heads=9,
                                   n_kv_heads=3, vocab=4096), ["Q4_K", "Q8_0"])
    plan = make_plan(meas, "0.6", ["Q4_K"], Constraints(super_weight_min_bits=None)).by_name()
    q = plan["model.layers.0.self_attn.q_proj.weight"]           # row 576: Q4_K -> Q5_0
    down = plan["model.layers.0.mlp.down_proj.weight"]            # row 1536: Q4_K is fine
    assert (q.format, q.bytes) == ("Q5_0", 576 * 18 * 22)
    assert (down.format, down.bytes) == ("Q4_K", 576 * 6 * 144)


def test_missing_errors_are_estimated(gguf_meas):
    meas = copy.deepcopy(gguf_meas)
    for t in meas["tensors"]:
        if t["layer"] == 2:
            t["errors"] = {}
    plan = make_plan(meas, "0.3", GGUF)
    assert all(x.estimated for x in plan.tensors if x.layer == 2 and x.kind != "norm")
    assert not any(x.estimated for x in plan.tensors if x.layer == 3)


def test_importance_weights_the_objective(gguf_meas):
    meas = copy.deepcopy(gguf_meas)
    for t in meas["tensors"]:
        t["importance"] = 1000.0 if t["layer"] == 4 else 1.0
    plan = make_plan(meas, "0.3", GGUF)
    bits = {x.layer: [] for x in plan.tensors if x.layer is not None}
    for x in plan.tensors:
        if x.layer is not None and x.kind != "norm":
            bits[x.layer].append(x.bits_per_weight)
    assert min(bits[4]) >= max(min(v) for k, v in bits.items() if k != 4)


def test_int_plan_keeps_embeddings_in_source_dtype():
    meas = make_measurements(SHAPE, INT)
    plan = make_plan(meas, "0.4", INT)
    assert plan.family == "int" and plan.totals.bytes <= plan.totals.budget_bytes
    by = plan.by_name()
    assert by["lm_head.weight"].format == "BF16" and by["lm_head.weight"].reason == "kept by backend"
    assert by["model.norm.weight"].bytes == 2 * SHAPE.hidden
    assert any(x.format.startswith("int") for x in plan.tensors)


def test_bad_inputs(gguf_meas):
    with pytest.raises(ConfigError, match="mix"):
        make_plan(gguf_meas, "0.3", ["Q4_K", "int4_g128"])
    with pytest.raises(ConfigError, match="schema_version"):
        make_plan({"schema_version": 7}, "0.3", GGUF)
    with pytest.raises(ConfigError, match="unknown format"):
        make_plan(gguf_meas, "0.3", ["Q4_Z"])


def test_plan_json_round_trip(gguf_meas, tmp_path):
    cons = Constraints(keep=(("lm_head", "Q8_0"),), min_embed_bits=5.0)
    plan = make_plan(gguf_meas, "4.5bpw", GGUF, cons)
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    assert Constraints.from_dict(cons.to_dict()) == cons


def test_imatrix_only_types(gguf_meas):
    needs = {"IQ1_S", "IQ2_XXS", "IQ2_XS", "IQ2_S"}
    plan = make_plan(gguf_meas, "0.18", GGUF)
    assert not any(x.format in needs for x in plan.tensors if x.kind in ("embed", "lm_head"))
    assert any(x.format in needs for x in plan.tensors)
    plan = make_plan(gguf_meas, "0.22", GGUF, Constraints(imatrix=False))
    assert not any(x.format in needs for x in plan.tensors)


def test_error_keys_are_case_insensitive(gguf_meas):
    meas = copy.deepcopy(gguf_meas)
    for t in meas["tensors"]:
        t["errors"] = {k.lower(): v for k, v in t["errors"].items()}
    assert not any(x.estimated for x in make_plan(meas, "0.3", GGUF).tensors)


def test_residual_error_model_weights_by_transfer():
    """error_model residual: the objective weight is the measured transfer (auto for int plans);
    a tensor whose errors reach the residual 1000x more gets the bits; local ignores transfer."""
    from llm_quantizer.plan.synthetic import Shape, make_measurements

    fmts = ["int3_g32", "int4_g32", "int8_g32", "BF16"]
    meas = make_measurements(Shape(num_layers=2, hidden=64, intermediate=128, n_heads=4, n_kv_heads=2,
                                   vocab=256), fmts, seed=1)
    hot = "model.layers.1.mlp.up_proj.weight"
    for t in meas["tensors"]:
        if t["layer"] is not None and t["quantizable"]:
            t["transfer"], t["importance"] = (1000.0 if t["name"] == hot else 1.0), 1.0
    plans = {em: make_plan(meas, "0.88", fmts, Constraints(error_model=em)) for em in ("auto", "residual", "local")}
    fmt = {em: {t.name: t.format for t in p.tensors} for em, p in plans.items()}
    assert fmt["auto"] == fmt["residual"]
    assert fmt["residual"][hot] in ("int8_g32", "BF16")
    assert [t for t in plans["residual"].tensors if t.name == hot][0].importance == 1000.0
    assert [t for t in plans["local"].tensors if t.name == hot][0].importance == 1.0
    with pytest.raises(ConfigError, match="error_model"):
        Constraints(error_model="global")


def _int_floor_kept(meas):
    """Bytes of the smallest int plan that keeps the embeddings in BF16 (its BudgetError range)."""
    with pytest.raises(BudgetError, match="kept in 16-bit") as e:
        make_plan(meas, "1.5bpw", INT, Constraints(int_embeddings="keep"))
    return e.value


@pytest.mark.parametrize("budget", ["2.5bpw", "3bpw", "0.2"])
def test_int_plan_quantizes_embeddings_below_the_kept_floor(budget):
    meas = make_measurements(SHAPE, INT)
    _int_floor_kept(meas)
    plan = make_plan(meas, budget, INT)                       # int_embeddings="auto"
    t, by = plan.totals, plan.by_name()
    assert t.bytes <= t.budget_bytes and t.bytes >= 0.99 * t.budget_bytes
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        fmt = get_format(by[name].format)
        assert fmt.family == "int" and by[name].bytes == fmt.nbytes(by[name].shape)


def test_int_embeddings_quantize_and_min_embed_bits():
    meas = make_measurements(SHAPE, INT)
    plan = make_plan(meas, "0.4", INT, Constraints(int_embeddings="quantize"))   # room to keep, but allowed
    assert plan.totals.bytes >= 0.99 * plan.totals.budget_bytes
    plan = make_plan(meas, "3bpw", INT, Constraints(min_embed_bits=4.0))
    for x in plan.tensors:
        if x.kind in ("embed", "lm_head"):
            assert x.bits_per_weight >= 4.0 and x.format.startswith("int")
    with pytest.raises(ConfigError, match="int_embeddings"):
        Constraints(int_embeddings="sometimes")


def test_auto_error_model_is_residual_for_gguf_when_measured():
    """GGUF plans too: auto = residual when the measurements carry transfer factors, else local."""
    from llm_quantizer.plan.synthetic import Shape, make_measurements

    fmts = ["Q3_K", "Q4_K", "Q6_K", "Q8_0"]
    meas = make_measurements(Shape(num_layers=2, hidden=256, intermediate=512, n_heads=4, n_kv_heads=2,
                                   vocab=512), fmts, seed=2)
    hot = "model.layers.0.self_attn.q_proj.weight"
    plain = make_plan(meas, "0.3", fmts, Constraints(overhead_bytes=0))
    assert plain.constraints.error_model == "auto"
    local = {t.name: t.importance for t in make_plan(meas, "0.3", fmts, Constraints(overhead_bytes=0, error_model="local")).tensors}
    assert {t.name: t.importance for t in plain.tensors} == local     # nothing measured: local
    for t in meas["tensors"]:
        if t["layer"] is not None and t["quantizable"]:
            t["transfer"] = 1000.0 if t["name"] == hot else 1.0
    auto = make_plan(meas, "0.3", fmts, Constraints(overhead_bytes=0))
    res = make_plan(meas, "0.3", fmts, Constraints(overhead_bytes=0, error_model="residual"))
    assert [(t.format, t.importance) for t in auto.tensors] == [(t.format, t.importance) for t in res.tensors]
    assert {t.name: t for t in auto.tensors}[hot].format in ("Q6_K", "Q8_0")
