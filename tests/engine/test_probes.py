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
