"""HF / GGUF -> GGUF writer: llama.cpp logits equal transformers' on tiny random models."""
import os

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
import gguf  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from llm_quantizer.gguf_writer import gguf_is_complete, permute_qk, shard_files, write_gguf  # noqa: E402
from llm_quantizer.gguf_writer.vocab import _pre_signature, PRE_TOKENIZERS  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402

from .tiny import build_model, gguf_logits, hf_logits, mean_kl, token_ids  # noqa: E402

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")
VOCAB = 320
# measured on these models: F32 <= 6e-8, F16 <= 3e-7, BF16 ~1e-5
KL_F32, KL_F16, KL_BF16 = 1e-5, 1e-4, 1e-3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("gw"), {}

    def get(arch: str, **kw):
        key = (arch, repr(sorted(kw.items())))
        if key not in cache:
            d = root / f"{arch}-{len(cache)}"
            tok = "spm" if arch == "gemma3" else "bpe"
            extra = {"eos_token_id": 2} if arch == "phi3" else {}
            cache[key] = (d, build_model(arch, d, VOCAB, tokenizer=tok, **extra, **kw))
        return cache[key]

    return get


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def _kl(model, path, n=48, n_ctx=128):
    ids = token_ids(n, VOCAB)
    return mean_kl(hf_logits(model, ids), gguf_logits(path, ids, n_ctx))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(models, tmp_path, arch):
    d, model = models(arch)
    f32 = write_gguf(d, tmp_path / "m-f32.gguf", "F32", progress=False)[0]
    f16 = write_gguf(d, tmp_path / "m-f16.gguf", "f16", progress=False)[0]
    assert _kl(model, f32) < KL_F32
    assert _kl(model, f16) < KL_F16
    types = _types(f16)
    shapes = {t.name: len(t.shape) for t in GGUFReader(f16).tensors}
    assert all(types[n] == ("F16" if nd == 2 else "F32") for n, nd in shapes.items())
    assert ("output.weight" in types) == (not model.config.tie_word_embeddings)
    if arch == "phi3":
        assert "blk.0.attn_qkv.weight" in types and "blk.0.ffn_gate.weight" not in types


def test_bf16_and_transforms(models, tmp_path):
    d, model = models("llama")
    path = write_gguf(d, tmp_path / "m.gguf", "BF16", progress=False)[0]
    assert _kl(model, path) < KL_BF16
    f32 = write_gguf(d, tmp_path / "m32.gguf", "F32", progress=False)[0]
    t = {x.name: np.array(x.data) for x in GGUFReader(f32).tensors}
    q = model.model.layers[0].self_attn.q_proj.weight.detach()
    assert np.array_equal(t["blk.0.attn_q.weight"], permute_qk(q, 4).numpy())
    gd, gemma = models("gemma3")
    g32 = write_gguf(gd, tmp_path / "g.gguf", "F32", progress=False)[0]
    norm = {x.name: np.array(x.data) for x in GGUFReader(g32).tensors}["blk.0.attn_q_norm.weight"]
    assert np.allclose(norm, gemma.model.layers[0].self_attn.q_norm.weight.detach().numpy() + 1)


@pytest.mark.parametrize("arch,kw", [
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64}}),
    ("gemma3", {"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
                                    "full_attention": {"rope_type": "default", "rope_theta": 20000.0}}}),
    ("phi3", {"original_max_position_embeddings": 64,
              "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                                  "original_max_position_embeddings": 64,
                                  "long_factor": [1.5, 2.0, 1.2, 3.0, 1.1, 2.5, 1.7, 1.3],
                                  "short_factor": [1.0] * 8}}),
])
def test_rope_and_sliding_variants(models, tmp_path, arch, kw):
    d, model = models(arch, **kw)
    path = write_gguf(d, tmp_path / "m.gguf", "F32", progress=False)[0]
    assert _kl(model, path, n=100) < KL_F32     # phi3: > 64 tokens, so the long factors


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_source_round_trip(models, tmp_path, arch):
    """A GGUF source: metadata copied verbatim, tensors unpermuted/unshifted then re-applied."""
    d, model = models(arch)
    first = write_gguf(d, tmp_path / "a.gguf", "F32", progress=False)[0]
    second = write_gguf(first, tmp_path / "b.gguf", "F32", progress=False)[0]
    ra, rb = GGUFReader(first), GGUFReader(second)
    assert list(rb.fields) == list(ra.fields)
    arch_key = f"{ra.fields['general.architecture'].contents()}.block_count"
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", arch_key):
        assert rb.fields[key].contents() == ra.fields[key].contents()
    ta, tb = {t.name: np.array(t.data) for t in ra.tensors}, {t.name: np.array(t.data) for t in rb.tensors}
    assert ta.keys() == tb.keys()
    for name in ta:
        assert np.allclose(ta[name], tb[name], atol=1e-6), name
    assert _kl(model, second) < KL_F32


def test_tokenizers_agree_with_llama_cpp(models, tmp_path):
    import llama_cpp
    import sentencepiece as spm
    from transformers import AutoTokenizer

    text = "The world was long, and they had water. 42 people!"
    def sp_encode(d):
        return spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")).encode(text)

    for arch, encode in (("llama", lambda d: AutoTokenizer.from_pretrained(d)(text)["input_ids"]),
                         ("gemma3", sp_encode)):
        d, _ = models(arch)
        path = write_gguf(d, tmp_path / f"{arch}.gguf", "F16", progress=False)[0]
        llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == encode(d), arch
        r = GGUFReader(path)
        assert len(r.fields["tokenizer.ggml.tokens"].data) == VOCAB            # padded to vocab_size
        assert r.fields["tokenizer.ggml.model"].contents() == ("gpt2" if arch == "llama" else "llama")
    assert "chat_template" in str(list(GGUFReader(tmp_path / "llama.gguf").fields))


def test_pre_tokenizer_names():
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                    {"type": "ByteLevel", "use_regex": True}]}
    assert PRE_TOKENIZERS[_pre_signature(smollm)] == "smollm"
    assert PRE_TOKENIZERS[_pre_signature({"type": "ByteLevel", "use_regex": True})] == "gpt-2"


def test_split_and_complete(models, tmp_path):
    d, model = models("llama")
    files = write_gguf(d, tmp_path / "s.gguf", "F32", split_max_size=40_000, progress=False)
    assert len(files) > 2 and all(f.is_file() for f in files)
    assert shard_files(tmp_path / "s.gguf") == files
    assert gguf_is_complete(tmp_path / "s.gguf", d, "F32")
    assert not gguf_is_complete(tmp_path / "s.gguf", d, "F16")
    assert _kl(model, files[0]) < KL_F32
    assert not gguf_is_complete(tmp_path / "missing.gguf", d, "F32")


def test_failed_write_leaves_nothing(models, tmp_path, monkeypatch):
    d, _ = models("qwen2")
    src = open_source(d)
    calls = {"n": 0}
    real = src.load

    def flaky(name):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(name)

    monkeypatch.setattr(src, "load", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        write_gguf(src, out / "m.gguf", "F16", progress=False)
    assert os.listdir(out) == []


@pytest.mark.slow
def test_smollm2_f16_logits_match_transformers(tmp_path, monkeypatch):
    """SmolLM2-135M (a Q4_1 GGUF): dequantized -> our F16 GGUF; llama.cpp vs transformers on the
    same dequantized weights, ~128 tokens."""
    import llama_cpp
    from transformers import AutoModelForCausalLM

    try:
        src = open_source("smollm2-135m")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"example model not installed: {e}")
    state = {n: src.load(n) for n in src.tensors}          # dequantized once, for both sides
    monkeypatch.setattr(src, "load", state.__getitem__)
    path = write_gguf(src, tmp_path / "smol-f16.gguf", "F16", progress=False)[0]
    assert GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "smollm"
    model = AutoModelForCausalLM.from_config(src.config).float().eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    text = ("The history of France spans many centuries. Paris, its capital, grew along the Seine and "
            "became a centre of art, science and politics. ") * 5
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False)[:128]
    assert len(ids) >= 100
    kl = mean_kl(hf_logits(model, ids), gguf_logits(path, ids, n_ctx=256))
    print(f"smollm2 F16 mean KL {kl:.2e}")
    assert kl < 1e-4
    assert gguf.LlamaFileType(GGUFReader(path).fields["general.file_type"].contents()).name == "MOSTLY_F16"
