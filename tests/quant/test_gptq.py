"""GPTQ against a plain transcription of the published algorithm (Frantar et al. 2022)."""
from dataclasses import replace

import pytest
import torch

from llm_quantizer.errors import BackendError
from llm_quantizer.quant.gptq import HessianAccumulator, factor_hessian, gptq_quantize
from llm_quantizer.quant.rtn import QuantArgs, compute_qparams, dequantize, quantize, quantize_rtn

ROWS, COLS = 48, 64


def _data(seed=0, n=512):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(ROWS, COLS, generator=g) * 0.05
    mix = torch.randn(COLS, COLS, generator=g) / COLS**0.5 + torch.eye(COLS)
    X = (torch.randn(n, COLS, generator=g) @ mix) * torch.linspace(0.2, 3.0, COLS)
    return W, X


def _hessian(X):
    acc = HessianAccumulator(COLS)
    for batch in X.reshape(8, -1, COLS):  # 8 sequences
        acc.add_batch(batch.unsqueeze(0))
    return acc.H


def paper_gptq(W, H, args, act_order=False, static_groups=False, percdamp=0.01):
    """Column-by-column GPTQ (paper's Algorithm 1 without blocks), written plainly.

    quant() is rtn's compressed-tensors quantizer; qparams as IST-DASLab/gptq chooses them.
    H^-1 is computed through Cholesky (cholesky_inverse) as the reference does.
    """
    W, H = W.clone().float(), H.clone()
    n = W.shape[1]
    gs = n if args.group_size == -1 else args.group_size
    col = replace(args, group_size=-1)
    channel_qp = compute_qparams(W, col)  # channel qparams: before dead columns are zeroed
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = [compute_qparams(W[:, g:g + gs], col) for g in range(0, n, gs)]
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H[range(n), range(n)] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros(W.shape, dtype=torch.int8)
    group_of = torch.zeros(n, dtype=torch.int32)
    dynamic = []
    for i in range(n):
        if args.group_size == -1:
            g, qp = 0, channel_qp
        elif static_groups:
            g = int(perm[i]) // gs
            qp = static[g]
        else:
            if i % gs == 0:
                dynamic.append(compute_qparams(W[:, i:i + gs], col))
            g, qp = i // gs, dynamic[-1]
        c = quantize(W[:, i:i + 1], *qp, args)
        q = dequantize(c, *qp).float()[:, 0]
        err = (W[:, i] - q) / Hinv[i, i]
        W[:, i + 1:] -= torch.outer(err, Hinv[i, i + 1:])
        codes[:, perm[i]], group_of[perm[i]] = c[:, 0], g
    table = [channel_qp] if args.group_size == -1 else (static if static_groups else dynamic)
    return codes, torch.cat([s for s, _ in table], 1), torch.cat([z for _, z in table], 1), group_of


CASES = [(gs, sym, ao, st) for gs in (-1, 16) for sym in (True, False) for ao in (False, True)
         for st in ((False, True) if gs != -1 else (False,))]


@pytest.mark.parametrize("gs,sym,act_order,static", CASES)
def test_equals_paper_algorithm_bit_exact(gs, sym, act_order, static):
    W, X = _data()
    H = _hessian(X)
    args = QuantArgs(bits=3, group_size=gs, symmetric=sym)
    res = gptq_quantize(W, H, args, blocksize=128, act_order=act_order, static_groups=static)
    codes, scales, zeros, g_idx = paper_gptq(W, H, args, act_order, static)
    assert torch.equal(res.codes, codes)
    assert torch.equal(res.scales, scales) and torch.equal(res.zeros, zeros)
    assert torch.equal(res.g_idx, g_idx)
    assert torch.equal(res.qweight_fake, dequantize(codes, scales, zeros, g_idx))
    assert res.contiguous_groups == (not act_order or static or gs == -1)


@pytest.mark.parametrize("gs,act_order", [(16, False), (16, True), (-1, True)])
def test_lazy_block_updates_match(gs, act_order):
    """Blocks only reorder float sums (Err1 @ Hinv vs per-column updates): codes stay equal."""
    W, X = _data(1)
    H = _hessian(X)
    args = QuantArgs(bits=4, group_size=gs, symmetric=False)
    one = gptq_quantize(W, H, args, blocksize=128, act_order=act_order)
    for bs in (16, 32, 8):
        blk = gptq_quantize(W, H, args, blocksize=bs, act_order=act_order)
        assert torch.equal(blk.codes, one.codes)
        assert torch.allclose(blk.qweight_fake.float(), one.qweight_fake.float(), rtol=1e-2, atol=0)
        assert abs(blk.loss - one.loss) <= 1e-4 * one.loss


def test_hessian_accumulator_running_mean():
    _, X = _data(2)
    H = _hessian(X)
    assert torch.allclose(H, 2 / 8 * X.t() @ X, rtol=1e-4, atol=1e-4)
    acc = HessianAccumulator(COLS)
    acc.add_batch(X)  # a 2-D batch counts as one sample, as in the reference
    assert acc.nsamples == 1 and torch.allclose(acc.H, 2 * X.t() @ X, rtol=1e-4, atol=1e-3)


def _out_err(W, Q, X):
    return ((X @ W.t() - X @ Q.float().t()) ** 2).sum().item()


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(act_order):
    W, X = _data(3)
    args = QuantArgs(bits=3, group_size=16, symmetric=True)
    res = gptq_quantize(W, _hessian(X), args, act_order=act_order)
    codes, s, z = quantize_rtn(W, args)
    assert _out_err(W, res.qweight_fake, X) < 0.8 * _out_err(W, dequantize(codes, s, z), X)


def test_dead_columns():
    W, X = _data(4)
    X[:, 5] = 0
    res = gptq_quantize(W, _hessian(X), QuantArgs(bits=4, group_size=16, symmetric=False))
    assert torch.isfinite(res.qweight_fake.float()).all()
    assert torch.all(res.qweight_fake[:, 5] == 0)


def test_cholesky_failure_raises_after_retries():
    W, _ = _data(5)
    with pytest.raises(BackendError, match="percdamp"):
        gptq_quantize(W, -torch.eye(COLS), QuantArgs(bits=4, group_size=16))


def test_damping_retry_recovers():
    W, X = _data(6)
    H = _hessian(X[:, :8] @ torch.randn(8, COLS))  # rank 8: needs more damping than 1e-12
    res = gptq_quantize(W, H, QuantArgs(bits=4, group_size=16), percdamp=1e-12)
    assert res.percdamp > 1e-12 and torch.isfinite(res.qweight_fake.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_runs_on_cuda():
    W, X = _data(7)
    args = QuantArgs(bits=4, group_size=16)
    res = gptq_quantize(W.cuda(), _hessian(X).cuda(), args, act_order=True)
    assert res.codes.is_cuda and res.qweight_fake.is_cuda


@pytest.mark.parametrize("gs,act_order,static", [(16, True, True), (16, False, False), (-1, True, False)])
def test_stacked_rows_with_shared_factor_equal_separate_solves(gs, act_order, static):
    """Weights fed the same input (q/k/v) share H: one factor, one stacked solve, the same bits."""
    W, X = _data(8)
    W2 = torch.randn(24, COLS, generator=torch.Generator().manual_seed(9)) * 0.05
    H = _hessian(X)
    args = QuantArgs(bits=4, group_size=gs, symmetric=False)
    factor = factor_hessian(H, 0.01, act_order)
    both = gptq_quantize(torch.cat([W, W2]), None, args, act_order=act_order, static_groups=static, factor=factor)
    for part, w in ((both.rows(0, ROWS), W), (both.rows(ROWS, ROWS + 24), W2)):
        one = gptq_quantize(w, H, args, act_order=act_order, static_groups=static)
        assert torch.equal(part.codes, one.codes) and torch.equal(part.scales, one.scales)
        assert torch.equal(part.zeros, one.zeros) and torch.equal(part.g_idx, one.g_idx)
        assert torch.equal(part.row_loss, one.row_loss)
    assert abs(both.loss - both.row_loss.sum().item()) == 0
