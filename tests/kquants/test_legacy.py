"""Legacy 32-wide encoders vs libggml's ggml_quantize_chunk, byte for byte, on SmolLM2 tensors."""
import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")
from llm_quantizer.ggml.quantize import dequantize_tensor, quantize_tensor  # noqa: E402
from llm_quantizer.kquants import cat_params, get_codec  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"]
TENSORS = ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight",
           "model.layers.12.self_attn.v_proj.weight"]


@pytest.fixture(scope="module")
def smol():
    from llm_quantizer.model import open_source

    src = open_source("smollm2-135m")
    rng = np.random.default_rng(0)
    out = {}
    for k, name in enumerate(TENSORS):
        w = src.load(name).float()[:: 7][:24].contiguous()  # 24 rows spread over the tensor
        C = w.shape[1]
        # importance like llama-imatrix's: mean x^2 of activations with heavy-tailed channel scales
        scale = np.exp(rng.standard_normal(C) * 1.2)
        acts = rng.standard_normal((256, C)) * scale
        out[name] = (w, torch.from_numpy((acts ** 2).mean(0).astype(np.float32)))
    return out


def _mismatch(ours, ref, type_size):
    a, b = ours.reshape(-1, type_size), ref.reshape(-1, type_size)
    return float((a != b).any(1).mean())


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES)
def test_bytes_equal_ggml(smol, qtype, use_imatrix):
    codec = get_codec(qtype)
    for name, (w, imat) in smol.items():
        qw = imat if use_imatrix else None
        ours = codec.encode(w, qw)
        ref = quantize_tensor(w.numpy(), qtype, None if qw is None else qw.numpy(), nthread=1)
        assert ours.shape == ref.shape and ours.dtype == np.uint8
        assert _mismatch(ours, ref, codec.type_size) == 0.0, (name, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_decomposition_matches_encode_and_dequant(smol, qtype):
    """params on column spans (with whole-row context) + per-column quantize + pack == encode;
    the dequantized values equal libggml's dequantization of the bytes."""
    codec = get_codec(qtype)
    w, imat = smol[TENSORS[1]]
    ctx = codec.row_context(w)
    spans = [(a, a + 64) for a in range(0, w.shape[1], 64)]
    ps = [codec.params(w[:, a:b], imat[a:b], **ctx) for a, b in spans]
    codes, deq = [], []
    for (a, b), p in zip(spans, ps):
        for c0 in range(a, b, 16):  # columns in pieces, as error feedback does
            cc, dd = codec.quantize(w[:, c0:c0 + 16], p, torch.arange(c0 - a, c0 - a + 16))
            codes.append(cc)
            deq.append(dd)
    raw = codec.pack(torch.cat(codes, 1), cat_params(ps))
    assert np.array_equal(raw, codec.encode(w, imat))
    ref = dequantize_tensor(raw, qtype, tuple(w.shape))
    assert np.array_equal(torch.cat(deq, 1).numpy(), ref)


def test_edge_blocks():
    """All-zero blocks, constant blocks, a single outlier, negative-only blocks."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 128)).astype(np.float32)
    w[0, :32] = 0
    w[1, 32:64] = 0.25
    w[2, 64:96] = 0
    w[2, 70] = -3.0
    w[3] = -np.abs(w[3])
    w[4, :32] = 1e-20
    imat = (rng.random(128) + 0.1).astype(np.float32)
    for qtype in TYPES:
        codec = get_codec(qtype)
        for qw in (None, imat):
            ours = codec.encode(torch.from_numpy(w), None if qw is None else torch.from_numpy(qw))
            ref = quantize_tensor(w, qtype, qw, nthread=1)
            assert np.array_equal(ours, ref), (qtype, qw is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("qtype", TYPES)
def test_cuda_equals_cpu(smol, qtype):
    codec = get_codec(qtype)
    w, imat = smol[TENSORS[0]]
    for qw in (None, imat):
        cpu = codec.encode(w, qw)
        gpu = codec.encode(w.cuda(), None if qw is None else qw.cuda())
        assert np.array_equal(cpu, gpu)


@pytest.mark.slow
@pytest.mark.parametrize("qtype", TYPES)
def test_full_tensor_bytes_equal(qtype):
    from llm_quantizer.model import open_source

    src = open_source("smollm2-135m")
    w = src.load("model.layers.5.mlp.up_proj.weight").float()
    imat = (w.abs().mean(0) + 0.01) ** 2
    codec = get_codec(qtype)
    for qw in (None, imat):
        ours = codec.encode(w, qw)
        ref = quantize_tensor(w.numpy(), qtype, None if qw is None else qw.numpy())
        assert _mismatch(ours, ref, codec.type_size) == 0.0
