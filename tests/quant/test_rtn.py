"""RTN must equal compressed-tensors' own qparams, quantize, dequantize and packing, bit for bit."""
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import (
    dequantize as ct_dequantize,
    fake_quantize as ct_fake_quantize,
    quantize as ct_quantize,
)
from compressed_tensors.quantization.utils.helpers import calculate_qparams

from llm_quantizer.errors import ConfigError
from llm_quantizer.quant.rtn import (
    QuantArgs,
    compute_qparams,
    dequantize,
    fake_quantize,
    quantize,
    quantize_rtn,
    to_unsigned,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _weight(seed=0, rows=24, cols=256):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[0] = w[0].abs() + 0.01  # all-positive row: min clamps to 0
    w[1] = -w[1].abs()  # all-negative row
    w[2, 5] = 0.4  # outlier
    w[3, :] *= 1e-3  # tiny scales
    return w


def _ct_args(args: QuantArgs) -> QuantizationArgs:
    return QuantizationArgs(num_bits=args.bits, type="int", symmetric=args.symmetric,
                            group_size=args.group_size, scale_dtype=DTYPES[args.scale_dtype])


def _ct_qparams(w, args: QuantArgs):
    gl = args.group_len(w.shape[1])
    wg = w.reshape(w.shape[0], -1, gl)
    return calculate_qparams(wg.amin(-1), wg.amax(-1), _ct_args(args))


CASES = [
    (bits, gs, sym, dt)
    for bits in (2, 3, 4, 8)
    for gs in (32, 128, -1)
    for sym in (True, False)
    for dt in ("bfloat16", "float16", "float32")
]


@pytest.mark.parametrize("bits,gs,sym,dt", CASES)
def test_matches_compressed_tensors(bits, gs, sym, dt):
    w = _weight(bits)
    args = QuantArgs(bits=bits, group_size=gs, symmetric=sym, scale_dtype=dt)
    ct_args = _ct_args(args)
    ct_s, ct_z = _ct_qparams(w, args)
    codes, s, z = quantize_rtn(w, args)
    assert s.dtype == DTYPES[dt] and z.dtype == torch.int8
    assert torch.equal(s.float(), ct_s) and torch.equal(z, ct_z)
    assert codes.dtype == torch.int8
    assert torch.equal(codes, ct_quantize(w, ct_s, ct_z, ct_args, dtype=torch.int8))
    assert int(codes.min()) >= args.qmin and int(codes.max()) <= args.qmax
    # checkpoint scales are stored in scale_dtype: dequantize in that dtype like the loader
    ref = ct_dequantize(codes, s, None if sym else z, ct_args)
    ours = dequantize(codes, s, None if sym else z)
    assert ours.dtype == ref.dtype == DTYPES[dt] and torch.equal(ours, ref)
    # with scales held in scale_dtype, ct's fake quant dequantizes in that dtype too
    assert torch.equal(fake_quantize(w, args), ct_fake_quantize(w, s, ct_z, ct_args).float())


@pytest.mark.parametrize("bits,gs,sym", [(4, 32, True), (3, 128, False), (8, -1, False), (2, 32, False)])
def test_pack_quantized_roundtrip_reproduces_fake_quant(bits, gs, sym):
    """What transformers loads (packed codes -> decompress) equals our fake-quantized weight."""
    args = QuantArgs(bits=bits, group_size=gs, symmetric=sym, scale_dtype="bfloat16")
    w = _weight(7).to(torch.bfloat16)
    codes, s, z = quantize_rtn(w, args)
    scheme = QuantizationScheme(targets=["Linear"], weights=_ct_args(args))
    # ct's compress() re-quantizes a float weight: give it the exact float32 product
    exact = {"weight": dequantize(codes, s.float(), z), "weight_scale": s, "weight_zero_point": z}
    packed = PackedQuantizationCompressor.compress(exact, scheme)
    assert torch.equal(packed["weight_packed"], pack_to_int32(codes, bits))
    out = PackedQuantizationCompressor.decompress(packed, scheme)
    assert out["weight"].dtype == torch.bfloat16
    assert torch.equal(out["weight"], dequantize(codes, s, z))


def test_mse_search_is_not_worse_and_stays_compatible():
    w = _weight(3)
    w[4, 7] = 1.0
    plain = QuantArgs(bits=3, group_size=32, symmetric=False)
    mse = QuantArgs(bits=3, group_size=32, symmetric=False, mse=True)
    err = lambda a: (fake_quantize(w, a) - w).abs().pow(2.4).sum()
    assert err(mse) < err(plain)
    s, z = compute_qparams(w, mse)  # any qparams go through the same compressed-tensors math
    ct = ct_fake_quantize(w, s, z, _ct_args(mse))
    assert torch.equal(dequantize(quantize(w, s, z, mse), s, z).float(), ct)


def test_zero_group_and_unsigned():
    w = _weight(1)
    w[:, :32] = 0.0
    for sym in (True, False):
        codes, s, z = quantize_rtn(w, QuantArgs(bits=4, group_size=32, symmetric=sym))
        assert torch.all(dequantize(codes, s, z)[:, :32] == 0) and torch.isfinite(s).all()
    uc, uz = to_unsigned(codes, z, 4)
    assert uc.dtype == torch.uint8 and int(uc.max()) <= 15
    assert torch.equal(uc.int() - uz.int()[:, torch.arange(256) // 32], codes.int() - z.int()[:, torch.arange(256) // 32])


def test_g_idx_and_validation():
    w = _weight(2, cols=64)
    args = QuantArgs(bits=4, group_size=16)
    codes, s, z = quantize_rtn(w, args)
    g_idx = torch.arange(64) // 16
    assert torch.equal(quantize(w, s, z, args, g_idx), codes)
    assert torch.equal(dequantize(codes, s, z, g_idx), dequantize(codes, s, z))
    with pytest.raises(ConfigError):
        QuantArgs(bits=1)
    with pytest.raises(ConfigError):
        QuantArgs(group_size=48).group_len(64)
    assert QuantArgs(scale_dtype=torch.float16).scale_dtype == "float16"
