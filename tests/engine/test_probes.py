"""Error probes: tr(dW H dW^T) / tokens against a dense re-computation, and the zero error of a
format that keeps a quantized GGUF source's own bytes."""
import numpy as np
import pytest
import torch

from llm_quantizer.engine.observers.probes import fake_quant, probe_tensor, written_type
from llm_quantizer.ggml import fake_quantize


@pytest.fixture
def wh():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    x = torch.randn(512, 256, generator=g)
    return w, x.T @ x


def test_errors_match_a_dense_recomputation(wh):
    w, h = wh
    got = probe_tensor(w, h, ["Q4_K", "Q8_0", "int4_g32"], None)
    dq = torch.from_numpy(fake_quantize(w.numpy(), "Q4_K")).float()
    ref = float(torch.trace((w - dq) @ h @ (w - dq).T))
    assert got["Q4_K"]["error"] == pytest.approx(ref, rel=1e-4)
    assert 0 < got["Q8_0"]["error"] < got["Q4_K"]["error"]


def test_stored_type_has_zero_error_and_is_not_requantized(wh):
    w, h = wh
    # w as a Q4_K source holds it: its dequantization, which Q4_K re-quantizes almost but not exactly
    src = torch.from_numpy(fake_quantize(w.numpy(), "Q4_K", imatrix=np.linspace(0.1, 2, 256, dtype=np.float32)))
    plain = probe_tensor(src, h, ["Q4_K", "Q8_0"], None)
    kept = probe_tensor(src, h, ["Q4_K", "Q8_0"], None, stored="Q4_K")
    assert plain["Q4_K"]["error"] > 0 and kept["Q4_K"]["error"] == 0.0
    assert kept["Q8_0"]["error"] == pytest.approx(plain["Q8_0"]["error"])
    assert torch.equal(fake_quant(src, "Q4_K", None, stored="Q4_K"), src)
    assert not torch.equal(fake_quant(src, "Q4_K", None), src)


def test_written_type_follows_llamacpp_fallbacks():
    assert written_type("Q4_K", (8, 640)) == "Q5_0"       # 640 is not a multiple of 256
    assert written_type("Q4_K", (8, 512)) == "Q4_K"
    assert written_type("BF16", (8, 640)) == "BF16"
    assert written_type("int4_g32", (8, 640)) is None


def test_gptq_rounding_matches_the_gptq_solver_and_beats_nearest():
    """rounding="gptq": the int formats' error is tr(dW H dW^T) of the GPTQ solver's own weights
    (act-order, static groups, bf16 scales), below nearest rounding's on correlated inputs; GGUF
    and float formats are unchanged."""
    from llm_quantizer.quant.gptq import gptq_quantize
    from llm_quantizer.quant.rtn import QuantArgs

    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 256, generator=g)
    mix = torch.randn(256, 256, generator=g) / 16 + torch.eye(256)
    x = torch.randn(1024, 256, generator=g) @ mix
    h = x.T @ x
    fmts = ["int3_g64", "int4_g128", "Q4_K", "BF16"]
    near = probe_tensor(w, h, fmts, None)
    gp = probe_tensor(w, h, fmts, None, rounding="gptq")
    q = gptq_quantize(w, h, QuantArgs(4, 128, True, scale_dtype="bfloat16"), act_order=True,
                      static_groups=True).qweight_fake.float()
    ref = float(torch.trace((w - q) @ h @ (w - q).T))
    assert gp["int4_g128"]["error"] == pytest.approx(ref, rel=1e-4)
    for f in ("int3_g64", "int4_g128"):
        assert gp[f]["error"] < 0.9 * near[f]["error"]
    assert gp["Q4_K"]["error"] == near["Q4_K"]["error"] and gp["BF16"]["error"] == near["BF16"]["error"]
    # a diagonal h (no full Hessian) falls back to nearest rounding
    assert probe_tensor(w, torch.diag(h), fmts, None, rounding="gptq") == probe_tensor(w, torch.diag(h), fmts, None)


def test_runtime_term_adds_llamacpps_activation_rounding(wh):
    """runtime=: each GGUF / float format also pays E||W dx||^2 of its vec_dot_type's input
    rounding; the stored type is no longer free, F32 still is, int formats get nothing."""
    from llm_quantizer.ggml.runtime import round_activations, squared_error_sums

    w, _ = wh
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 256, generator=g)
    x[:, 5] *= 80                              # a massive activation channel
    h = x.T @ x / x.shape[0]
    rt = {t: v / x.shape[0] for t, v in squared_error_sums(x, ["Q8_0", "Q8_K", "F16", "BF16"]).items()}
    fmts = ["Q4_K", "Q8_0", "F16", "F32", "int4_g32"]
    plain = probe_tensor(w, h, fmts, None, stored="Q4_K")
    got = probe_tensor(w, h, fmts, None, stored="Q4_K", runtime=rt)
    for f, act in (("Q4_K", "Q8_K"), ("Q8_0", "Q8_0"), ("F16", "F16")):
        dense = float(((x - round_activations(x, act)) @ w.T).pow(2).sum()) / x.shape[0]
        assert got[f]["runtime"] == pytest.approx(dense, rel=0.05)
        assert got[f]["error"] == pytest.approx(plain[f]["error"] + got[f]["runtime"])
    assert plain["Q4_K"]["error"] == 0.0 < got["Q4_K"]["error"]
    assert got["F32"]["error"] == plain["F32"]["error"] == 0.0
    assert got["int4_g32"] == plain["int4_g32"]
    # Q8_K's 256-wide blocks share the outlier's scale: its runtime error dwarfs Q8_0's
    assert got["Q4_K"]["runtime"] > 5 * got["Q8_0"]["runtime"]


def test_input_stats_runtime_mean_is_a_strided_estimate_of_the_full_mean():
    from llm_quantizer.engine.observers.activations import RUNTIME_STRIDE, InputStats
    from llm_quantizer.ggml.runtime import squared_error_sums

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1003, 64, generator=g) * torch.linspace(0.1, 5, 64)
    s = InputStats(64, True, "cpu", ("Q8_0", "F16"))
    for b in x.split(97):            # batches not a multiple of the stride: rows stay evenly strided
        s.add(b)
    assert s.runtime_count == len(range(0, 1003, RUNTIME_STRIDE))
    exact = squared_error_sums(x[::RUNTIME_STRIDE], ["Q8_0"])["Q8_0"] / s.runtime_count
    assert torch.allclose(s.runtime_mean_sq()["Q8_0"], exact)
    full = squared_error_sums(x, ["Q8_0"])["Q8_0"] / x.shape[0]
    assert float(s.runtime_mean_sq()["Q8_0"].sum()) == pytest.approx(float(full.sum()), rel=0.05)
