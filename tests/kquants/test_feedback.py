"""Error feedback inside GGUF blocks: lower tr(dW H dW^T) than nearest rounding, exact bytes."""
import numpy as np
import pytest
import torch

from llm_quantizer.kquants import CODECS, get_codec, has_codec
from llm_quantizer.kquants.feedback import feedback_encode, nearest_encode, output_error

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"]
has_codec("Q8_0")  # loads every codec module
K_TYPES = sorted(set(CODECS) - set(TYPES))   # helper K's 256-wide codecs, whatever is registered


def _layer(C=128, R=48, n=512, seed=0):
    """W [R, C] and a real-ish Hessian: correlated inputs with heavy-tailed channel scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(C) + 0.3 * torch.randn(C, C, generator=g) / C ** 0.5
    scale = torch.exp(torch.randn(C, generator=g) * 0.8)
    X = (torch.randn(n, C, generator=g) @ mix) * scale
    H = 2 / n * X.t() @ X
    W = torch.randn(R, C, generator=g) * 0.05
    return W, H


@pytest.mark.parametrize("qtype", TYPES)
def test_feedback_lowers_output_error(qtype):
    W, H = _layer()
    qw = torch.diagonal(H).clone()
    res = feedback_encode(qtype, W, H, qw=qw)
    _, near = nearest_encode(qtype, W, qw)
    e_fb, e_near = output_error(W, res.fake, H), output_error(W, near, H)
    assert e_fb < 0.9 * e_near, (qtype, e_fb, e_near)


@pytest.mark.parametrize("qtype", TYPES)
def test_feedback_bytes_decode_to_fake(qtype):
    pytest.importorskip("llama_cpp")
    from llm_quantizer.ggml.quantize import dequantize_tensor

    W, H = _layer(C=64, R=8)
    res = feedback_encode(qtype, W, H)
    assert res.raw.shape == (8, get_codec(qtype).row_size(64))
    assert np.array_equal(dequantize_tensor(res.raw, qtype, (8, 64)), res.fake.numpy())


@pytest.mark.parametrize("qtype", TYPES)
def test_identity_hessian_is_nearest_rounding(qtype):
    """H = I: nothing to feed back, so the bytes are exactly llama.cpp's (same importance)."""
    W, _ = _layer(C=96, R=16)
    qw = torch.rand(96, generator=torch.Generator().manual_seed(1)) + 0.1
    res = feedback_encode(qtype, W, torch.eye(96), qw=qw)
    raw, _ = nearest_encode(qtype, W, qw)
    assert np.array_equal(res.raw, raw)


@pytest.mark.parametrize("qtype", K_TYPES)
def test_feedback_with_256_wide_codecs(qtype):
    """The driver works unchanged with the K-quant codecs: lower error, exact bytes, H = I is nearest."""
    pytest.importorskip("llama_cpp")
    from llm_quantizer.ggml.quantize import dequantize_tensor

    W, H = _layer(C=256, R=16)
    qw = torch.diagonal(H).clone()
    res = feedback_encode(qtype, W, H, qw=qw)
    raw, near = nearest_encode(qtype, W, qw)
    assert output_error(W, res.fake, H) < 0.95 * output_error(W, near, H)
    assert np.array_equal(dequantize_tensor(res.raw, qtype, (16, 256)), res.fake.numpy())
    assert np.array_equal(feedback_encode(qtype, W, torch.eye(256), qw=qw).raw, raw)
