"""Plan -> llama-quantize rules, compressed-tensors config groups, GPTQModel dynamic; files."""
from __future__ import annotations

import json
import re

import pytest

from llm_quantizer.errors import ConfigError
from llm_quantizer.formats import default_candidates, get_format
from llm_quantizer.plan import make_plan, to_compressed_tensors, to_gptqmodel, to_llama_quantize, write_plan
from llm_quantizer.plan.patterns import compress
from llm_quantizer.plan.synthetic import Shape, make_measurements

SHAPE = Shape(num_layers=6, hidden=512, intermediate=1536, n_heads=8, n_kv_heads=2, vocab=2048)


@pytest.fixture(scope="module")
def gguf_plan():
    fmts = default_candidates("gguf")
    return make_plan(make_measurements(SHAPE, fmts), "0.3", fmts)


@pytest.fixture(scope="module")
def int_plan():
    fmts = default_candidates("int")
    return make_plan(make_measurements(SHAPE, fmts), "0.5", fmts)


def test_compress_patterns():
    universe = [f"blk.{i}.{s}.weight" for i in range(4) for s in ("attn_q", "attn_k")] + ["output.weight"]
    pats = compress([f"blk.{i}.attn_q.weight" for i in range(4)] + ["blk.1.attn_k.weight", "output.weight"], universe)
    assert r"^blk\.\d+\.attn_q\.weight$" in pats and r"^output\.weight$" in pats
    assert r"^blk\.1\.attn_k\.weight$" in pats
    merged = compress(["blk.1.attn_q.weight", "blk.1.attn_k.weight"], universe)
    assert merged == [r"^blk\.1\.(?:attn_k\.weight|attn_q\.weight)$"]


def test_llama_quantize_rules_cover_every_matrix_once(gguf_plan):
    spec = to_llama_quantize(gguf_plan)
    assert spec.ftype not in ("F32", "F16", "BF16")          # else llama.cpp ignores the rules
    for pattern, _ in spec.tensor_types:
        assert pattern == pattern.lower() and "=" not in pattern
    for t in gguf_plan.tensors:
        hits = [ty for rx, ty in spec.tensor_types if re.search(rx, t.gguf_name)]
        assert hits == ([t.format] if len(t.shape) >= 2 else []), t.gguf_name
    assert len(spec.tensor_types) < sum(len(t.shape) >= 2 for t in gguf_plan.tensors)
    args = spec.args()
    assert args[0] == "--tensor-type" and args[1].endswith("=" + spec.tensor_types[0][1].lower())


def _module(name):
    return name[: -len(".weight")]


def _ct_match(name, target):
    """compressed-tensors' own matcher when installed ("re:" -> re.match, else exact)."""
    try:
        from compressed_tensors.utils.match import match_name
    except ImportError:
        return re.match(target[3:], name) if target.startswith("re:") else target == name
    return match_name(name, target)


def test_compressed_tensors_groups(int_plan):
    cfg = to_compressed_tensors(int_plan)
    assert cfg["format"] == "pack-quantized" and cfg["quant_method"] == "compressed-tensors"
    try:
        from compressed_tensors.quantization import QuantizationConfig
        assert QuantizationConfig.model_validate(cfg).format == "pack-quantized"
    except ImportError:
        pass
    for t in int_plan.tensors:
        if len(t.shape) < 2:
            continue
        groups = [g for g in cfg["config_groups"].values()
                  if any(_ct_match(_module(t.name), x) for x in g["targets"])]
        fmt = get_format(t.format)
        if fmt.family != "int":
            assert groups == [] and _module(t.name) in cfg["ignore"]
            continue
        assert len(groups) == 1, t.name
        w = groups[0]["weights"]
        assert (w["num_bits"], w["symmetric"]) == (fmt.bits, fmt.symmetric)
        assert w["group_size"] == (None if fmt.group_size == -1 else fmt.group_size)
        assert w["strategy"] == ("channel" if fmt.group_size == -1 else "group")
    json.dumps(cfg)


def test_gptqmodel_dynamic(int_plan):
    cfg = to_gptqmodel(int_plan)
    for t in int_plan.tensors:
        if len(t.shape) < 2:
            continue
        hits = [(k, v) for k, v in cfg["dynamic"].items() if re.match(k[2:], _module(t.name))]
        fmt = get_format(t.format)
        if fmt.family != "int":
            assert [k[:2] for k, _ in hits] == ["-:"]
            continue
        scheme = hits[0][1] if hits else {"bits": cfg["bits"], "group_size": cfg["group_size"], "sym": cfg["sym"]}
        assert len(hits) <= 1 and scheme == {"bits": fmt.bits, "group_size": fmt.group_size, "sym": fmt.symmetric}


def test_family_mismatch(gguf_plan, int_plan):
    with pytest.raises(ConfigError):
        to_compressed_tensors(gguf_plan)
    with pytest.raises(ConfigError):
        to_llama_quantize(int_plan)


def test_write_plan(gguf_plan, int_plan, tmp_path):
    paths = write_plan(gguf_plan, tmp_path / "g")
    assert paths["plan"].name == "quantization_plan.json" and paths["plan"].parent.name == "quantization_plan"
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    lines = paths["tensor_types"].read_text().splitlines()
    assert len(lines) == len(to_llama_quantize(gguf_plan).tensor_types)
    paths = write_plan(int_plan, tmp_path / "i")
    assert json.loads(paths["compressed_tensors"].read_text())["format"] == "pack-quantized"
    assert "dynamic" in json.loads(paths["gptqmodel"].read_text())
    assert not list((tmp_path / "i" / "quantization_plan").glob(".*tmp"))
