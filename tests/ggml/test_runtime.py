"""The activation rounding of llama.cpp's CPU matmuls, against libggml-cpu itself: the weight type
-> activation type table, and the Q8_0 / Q8_K row quantizers (ggml's native SIMD ones)."""
import ctypes

import numpy as np
import pytest
import torch

from llm_quantizer.ggml.runtime import activation_type, round_activations, runtime_error, squared_error_sums

pytest.importorskip("llama_cpp")
from llm_quantizer.ggml.lib import cpu_from_float_fn, row_size, to_float_fn, vec_dot_type  # noqa: E402

WEIGHT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS"]


@pytest.mark.parametrize("wtype", WEIGHT_TYPES)
def test_activation_type_is_ggml_cpus_vec_dot_type(wtype):
    lib = vec_dot_type(wtype).name
    ours = activation_type(wtype)
    assert (ours or "F32") == ("Q8_0" if lib == "Q8_1" else lib)


def ggml_roundtrip(x: np.ndarray, act_type: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    buf = (ctypes.c_uint8 * row_size(act_type, x.size))()
    cpu_from_float_fn(act_type)(x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.addressof(buf), x.size)
    if act_type == "Q8_K":     # ggml has no to_float for Q8_K: block = float d, int8 qs[256], int16 bsums[16]
        blocks = np.frombuffer(bytes(buf), dtype=np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)]))
        return (blocks["d"][:, None] * blocks["qs"].astype(np.float32)).reshape(x.shape)
    out = np.empty_like(x)
    to_float_fn(act_type)(ctypes.addressof(buf), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), x.size)
    return out


@pytest.mark.parametrize("act_type", ["Q8_0", "Q8_K"])
def test_rounding_matches_libggml_cpu(act_type):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1024, generator=g)
    x[:, 7] *= 300          # a massive activation: sets its block's scale
    x[3, 256:512] = 0       # an all-zero block
    ref = torch.from_numpy(ggml_roundtrip(x.numpy(), act_type))
    ours = round_activations(x, act_type)
    assert not torch.equal(ref, x)
    # ties and the native code's reciprocal can differ by one code in a rare element
    step = x.reshape(-1, 32 if act_type == "Q8_0" else 256).abs().amax(-1, keepdim=True) / 127
    diff = ((ours - ref).reshape(step.shape[0], -1).abs() / step.clamp_min(1e-30))
    assert diff.max() <= 1.01 and (diff > 1e-3).float().mean() < 1e-3
    err_ref, err = (x - ref).pow(2).sum(), (x - ours).pow(2).sum()
    assert float(err) == pytest.approx(float(err_ref), rel=1e-3)


def test_runtime_error_matches_a_dense_recomputation():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(24, 512, generator=g), torch.randn(200, 512, generator=g)
    x[:, 3] *= 50
    sums = squared_error_sums(x, ["Q8_0", "Q8_K", "F16"])
    for t in ("Q8_0", "Q8_K", "F16"):
        dense = float(((x - round_activations(x, t)) @ w.T).pow(2).sum()) / x.shape[0]
        # the diagonal model: the rounding errors of different channels are uncorrelated
        assert runtime_error(w, sums[t] / x.shape[0]) == pytest.approx(dense, rel=0.05)
    # one outlier per row: 256-wide Q8_K blocks round the other channels far worse than Q8_0's 32
    assert runtime_error(w, sums["Q8_K"]) > 4 * runtime_error(w, sums["Q8_0"]) > 4 * runtime_error(w, sums["F16"])
    assert "Q8_K" not in squared_error_sums(torch.randn(4, 640), ["Q8_0", "Q8_K"])
