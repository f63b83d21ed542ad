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


# ---- act-order with static params, grid-nearest codes, least-squares refit ---------------------
ALL_TYPES = TYPES + K_TYPES


def _code_range(codec):
    if codec.name == "Q8_0":
        return range(-128, 128)
    if codec.name in ("IQ4_NL", "IQ4_XS"):
        return range(16)
    if codec.block == 32:
        return range(1 << codec.bits)
    return range(codec.qmax + 1)


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_nearest_codes_are_the_nearest_grid_points(qtype):
    """codec.nearest picks, per weight, the code whose decoded value is closest (brute force)."""
    codec = get_codec(qtype)
    W, H = _layer(C=256, R=8, seed=3)
    p = codec.params(W, torch.diagonal(H).clone())
    codes, deq = codec.nearest(W, p, torch.arange(256))
    assert torch.equal(codec.dequantize(codes, p), deq)
    best = torch.stack([(W - codec.dequantize(torch.full_like(codes, k), p)).abs()
                        for k in _code_range(codec)]).min(dim=0).values
    assert torch.allclose((W - deq).abs(), best, rtol=0, atol=1e-7)


def _dense_gptq(codec, W, H, p, perm, percdamp):
    """GPTQ written out directly: full inverse Hessian in float64, one column at a time in
    ``perm`` order, the column eliminated from H^-1 by its Schur complement after each step."""
    W = W.double().clone()
    Hd = H.double().clone()
    Hd += percdamp * torch.diagonal(Hd).mean() * torch.eye(H.shape[0], dtype=torch.float64)
    Hinv = torch.linalg.inv(Hd)
    codes = torch.zeros(W.shape, dtype=torch.int32)
    for j in perm.tolist():
        c, q = codec.nearest(W[:, j:j + 1].float(), p, torch.tensor([j]))
        codes[:, j] = c[:, 0]
        err = (W[:, j] - q[:, 0].double()) / Hinv[j, j]
        W -= torch.outer(err, Hinv[j])
        Hinv -= torch.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
    return codes


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "IQ4_NL", "Q4_K", "Q3_K"])
def test_static_act_order_matches_dense_reference(qtype):
    """Lazy-batch act-order with static (up-front llama.cpp) params = the dense algorithm."""
    codec = get_codec(qtype)
    W, H = _layer(C=256, R=12, seed=5)
    qw = torch.diagonal(H).clone()
    res = feedback_encode(codec, W, H, qw=qw, act_order=True, codes="nearest", percdamp=0.01)
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
    ref = _dense_gptq(codec, W, H, codec.params(W, qw), perm, 0.01)
    same = (torch.from_numpy(res.raw) == torch.from_numpy(codec.pack(ref, codec.params(W, qw)))).float().mean()
    assert same > 0.99, same
    e_ref = output_error(W, codec.dequantize(ref, codec.params(W, qw)), H)
    assert abs(res.error - e_ref) <= 0.01 * e_ref


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "IQ4_NL", "Q2_K", "Q5_K", "Q6_K", "IQ4_XS"])
def test_refit_is_the_least_squares_fit(qtype):
    """Refit theta for fixed codes = per-row weighted least squares under H (then fp16), never worse."""
    from llm_quantizer.kquants.feedback import refit_params, row_errors

    codec = get_codec(qtype)
    W, H = _layer(C=256, R=6, seed=7)
    p = codec.params(W, torch.diagonal(H).clone())
    codes, _ = codec.nearest(W, p, torch.arange(256))
    p2 = refit_params(codec, W, H, codes, p)
    e_old = row_errors(W, codec.dequantize(codes, p), H)
    e_new = row_errors(W, codec.dequantize(codes, p2), H)
    assert (e_new <= e_old).all()
    # the unrounded optimum, by lstsq on H^(1/2): the fp16 result is within rounding of it
    B = codec.refit_basis(codes, p).double()
    G, K = codec.refit_width, B.shape[-1]
    Lh = torch.linalg.cholesky(H.double() + 1e-9 * torch.eye(256, dtype=torch.float64))
    for r in range(W.shape[0]):
        A = torch.zeros(256, 256 // G * K, dtype=torch.float64)
        for c in range(256):
            A[c, (c // G) * K:(c // G + 1) * K] = B[r, c]
        th = torch.linalg.lstsq(Lh.T @ A, Lh.T @ W[r].double()).solution
        d = W[r].double() - A @ th
        e_ls = float(d @ H.double() @ d)
        assert e_new[r] <= 1.01 * e_ls + 1e-12, (r, float(e_new[r]), e_ls, float(e_old[r]))


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_act_order_refit_bytes_decode_to_fake(qtype):
    pytest.importorskip("llama_cpp")
    from llm_quantizer.ggml.quantize import dequantize_tensor

    W, H = _layer(C=256, R=8, seed=11)
    qw = torch.diagonal(H).clone()
    res = feedback_encode(qtype, W, H, qw=qw, act_order=True, refit=2)
    assert np.array_equal(dequantize_tensor(res.raw, qtype, (8, 256)), res.fake.numpy())
    _, near = nearest_encode(qtype, W, qw)
    assert res.error < output_error(W, near, H)
    assert res.error <= feedback_encode(qtype, W, H, qw=qw, act_order=True, codes="nearest").error + 1e-12
