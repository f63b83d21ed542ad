"""AWQ scale search, clip search and scale folding."""
import torch
import torch.nn.functional as F

from llm_quantizer.quant.awq import (
    apply_clip,
    auto_clip,
    fold_into_linear_rows,
    fold_into_norm,
    ratio_scales,
    scale_linear_columns,
    search_scales,
)
from llm_quantizer.quant.rtn import QuantArgs, fake_quantize

IN, OUT = 64, 96
ARGS = QuantArgs(bits=3, group_size=32, symmetric=False, scale_dtype="float32")


def _salient(seed=0, n=1024):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    x[:, [3, 17, 40]] *= 25.0  # a few salient input channels
    w = torch.randn(OUT, IN, generator=g) * 0.05
    return x, w


def _mse(x, w, wq):
    return ((x @ w.t() - x @ wq.t()) ** 2).mean().item()


def test_scale_search_beats_rtn():
    x, w = _salient()
    res = search_scales(x, [w], ARGS)
    rtn = _mse(x, w, fake_quantize(w, ARGS))
    assert abs(res.losses[0] - rtn) <= 1e-6 * rtn  # ratio 0 is plain RTN
    assert len(res.losses) == 20 and res.ratio > 0
    s = res.scales
    awq = _mse(x, w, fake_quantize(w * s, ARGS) / s)
    assert awq == min(res.losses) or abs(awq - min(res.losses)) <= 1e-6 * awq
    assert awq < 0.7 * rtn


def test_scale_search_with_block_forward():
    """gate/up searched through the whole MLP, as llm-awq's module2inspect."""
    x, wg = _salient(1)
    wu = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(9)) * 0.05
    mlp = lambda x, ws: F.silu(x.float() @ ws[0].float().t()) * (x.float() @ ws[1].float().t())
    res = search_scales(x, [wg, wu], ARGS, forward=mlp)
    assert min(res.losses) < 0.8 * res.losses[0]
    assert torch.allclose(ratio_scales(x.abs().mean(0), res.ratio), res.scales)


def test_auto_clip_reduces_error():
    x, w = _salient(2)
    w[:, 5] *= 8  # outlier weights that clipping should trim
    mv = auto_clip(w, x, ARGS, batch_rows=40)
    assert mv.shape == (OUT, IN // 32)
    wc = apply_clip(w, mv)
    assert torch.all(wc.abs() <= w.abs())
    assert _mse(x, w, fake_quantize(wc, ARGS)) < _mse(x, w, fake_quantize(w, ARGS))


def _rms_norm(x, weight, offset=0.0, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (offset + weight)


def test_fold_into_rmsnorm_keeps_function():
    x, w = _salient(3)
    s = torch.rand(IN) * 3 + 0.2
    for offset in (0.0, 1.0):  # llama-style w, Gemma-style (1 + w)
        nw = torch.randn(IN) * 0.1 + (0.0 if offset else 1.0)
        ref = _rms_norm(x, nw, offset) @ w.t()
        nw2, _ = fold_into_norm(nw, s, norm_offset=offset)
        out = _rms_norm(x, nw2, offset) @ scale_linear_columns(w, s).t()
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_fold_into_layernorm_and_linear_keeps_function():
    x, w = _salient(4)
    s = torch.rand(IN) * 3 + 0.2
    ln_w, ln_b = torch.rand(IN) + 0.5, torch.randn(IN) * 0.1
    ref = F.layer_norm(x, (IN,), ln_w, ln_b) @ w.t()
    w2, b2 = fold_into_norm(ln_w, s, ln_b)
    out = F.layer_norm(x, (IN,), w2, b2) @ scale_linear_columns(w, s).t()
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
    # up -> down with a gate in between (linear in up's output)
    up, up_b = torch.randn(IN, IN) * 0.1, torch.randn(IN) * 0.1
    gate = torch.rand(x.shape[0], IN)
    ref = (gate * (x @ up.t() + up_b)) @ w.t()
    up2, up_b2 = fold_into_linear_rows(up, s, up_b)
    out = (gate * (x @ up2.t() + up_b2)) @ scale_linear_columns(w, s).t()
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
