import importlib.util
import struct

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as QT, GGUFReader

from llm_quantizer.errors import BackendError, ConfigError
from llm_quantizer.ggml.imatrix import (
    imatrix_means, read_imatrix, read_imatrix_metadata, write_imatrix)
from llm_quantizer.ggml.llama_quantize import llama_quantize, llama_quantize_command

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2
VOCAB = 3 + 256
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python not installed")
LINEARS = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // 2, HIDDEN), "attn_v": (HIDDEN // 2, HIDDEN),
           "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN),
           "ffn_down": (HIDDEN, FFN)}  # numpy [out, in]


def _tiny_weights(rng):
    ws = {"token_embd.weight": (VOCAB, HIDDEN), "output.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        ws.update({f"blk.{i}.{k}.weight": s for k, s in LINEARS.items()})
    out = {n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in ws.items()}
    out["output_norm.weight"] = np.ones(HIDDEN, np.float32)
    for i in range(LAYERS):
        out[f"blk.{i}.attn_norm.weight"] = out[f"blk.{i}.ffn_norm.weight"] = np.ones(HIDDEN, np.float32)
    return out


def _write_tiny_llama(path, weights):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny"); w.add_context_length(256); w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS); w.add_feed_forward_length(FFN); w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS); w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS); w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)])
    w.add_token_scores([0.0] * VOCAB); w.add_token_types([2, 3, 3] + [6] * 256)
    w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
    for name, a in weights.items():
        w.add_tensor(name, a)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("tiny")
    weights = _tiny_weights(rng)
    _write_tiny_llama(d / "tiny-f32.gguf", weights)
    entries = {n: ((rng.random(a.shape[1]) * 640 + 1).astype(np.float32), 640.0)
               for n, a in weights.items() if a.ndim == 2 and n != "token_embd.weight"}
    write_imatrix(d / "imatrix.gguf", entries, datasets=["synthetic.txt"], chunk_count=5, chunk_size=128)
    return d, entries


def _types(path):
    return {t.name: t.tensor_type for t in GGUFReader(path).tensors}


def test_write_read_round_trip(tiny):
    d, entries = tiny
    back = read_imatrix(d / "imatrix.gguf")
    assert set(back) == set(entries)
    for name, (sums, count) in entries.items():
        assert np.array_equal(back[name][0], sums) and back[name][1].tolist() == [count]
    assert read_imatrix_metadata(d / "imatrix.gguf") == {
        "datasets": ["synthetic.txt"], "chunk_count": 5, "chunk_size": 128}
    reader = GGUFReader(d / "imatrix.gguf")
    assert reader.fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in reader.fields


def test_means_per_expert_and_zero_counts():
    sums = np.arange(8, dtype=np.float32).reshape(2, 4)
    m = imatrix_means({"x": (sums, np.array([2.0, 0.0]))})["x"]
    assert m.tolist() == [0.0, 0.5, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0]


def test_read_legacy_dat(tmp_path):
    vals = np.array([3.0, 6.0, 9.0], np.float32)  # legacy stores mean * ncall
    name = b"blk.0.ffn_up.weight"
    blob = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 3)
    blob += vals.tobytes() + struct.pack("<i", 3) + struct.pack("<i", 4) + b"data"
    (tmp_path / "imatrix.dat").write_bytes(blob)
    means = imatrix_means(read_imatrix(tmp_path / "imatrix.dat"))
    assert means["blk.0.ffn_up.weight"].tolist() == [1.0, 2.0, 3.0]


@needs_llama
def test_llama_quantize_with_imatrix_and_overrides(tiny):
    d, _ = tiny
    out = d / "q4km.gguf"
    overrides = [(r"blk\.1\.ffn_down", "Q8_0"), (r"ffn_down", "Q5_K"), (r"blk\.0\.attn_q", QT.IQ4_XS)]
    assert llama_quantize(d / "tiny-f32.gguf", out, "Q4_K_M", overrides, d / "imatrix.gguf", nthread=2) == 0
    types = _types(out)
    assert types["blk.1.ffn_down.weight"] == QT.Q8_0  # first matching override wins
    assert types["blk.0.ffn_down.weight"] == QT.Q5_K
    assert types["blk.0.attn_q.weight"] == QT.IQ4_XS
    assert types["blk.0.attn_k.weight"] == QT.Q4_K and types["blk.0.attn_norm.weight"] == QT.F32
    plain = d / "q4km-plain.gguf"
    llama_quantize(d / "tiny-f32.gguf", plain, "Q4_K", overrides, nthread=2)
    data = {p: {t.name: bytes(t.data) for t in GGUFReader(p).tensors} for p in (out, plain)}
    assert data[out]["blk.0.attn_k.weight"] != data[plain]["blk.0.attn_k.weight"]  # imatrix was used


@needs_llama
def test_llama_quantize_requires_imatrix_for_iq2(tiny):
    d, entries = tiny
    with pytest.raises(BackendError, match="llama_model_quantize failed"):
        llama_quantize(d / "tiny-f32.gguf", d / "iq2.gguf", "IQ2_XXS", nthread=2)
    assert not (d / "iq2.gguf").exists()
    llama_quantize(d / "tiny-f32.gguf", d / "iq2.gguf", "IQ2_XXS", imatrix=imatrix_means(entries), nthread=2)
    assert _types(d / "iq2.gguf")["blk.0.ffn_up.weight"] == QT.IQ2_XXS


def test_command_line():
    argv = llama_quantize_command("in.gguf", "out.gguf", "q4_k", [(r"blk\.1\.ffn_down", "q8_0")],
                                  "imatrix.gguf", allow_requantize=True, nthread=4,
                                  output_tensor_type="Q6_K", token_embedding_type=QT.Q8_0)
    assert argv == ["llama-quantize", "--allow-requantize", "--imatrix", "imatrix.gguf",
                    "--output-tensor-type", "Q6_K", "--token-embedding-type", "Q8_0",
                    "--tensor-type", r"blk\.1\.ffn_down=Q8_0", "in.gguf", "out.gguf", "Q4_K_M", "4"]
    with pytest.raises(ConfigError, match="lower case"):
        llama_quantize_command("a", "b", "Q4_K_M", [(r"blk\.\D+", "Q8_0")])
    with pytest.raises(ConfigError, match="unknown llama.cpp quantization type"):
        llama_quantize_command("a", "b", "Q4_K_X")
