import numpy as np
import pytest
import torch

from llm_quantizer.errors import ModelSourceError
from llm_quantizer.gguf_writer import write_gguf
from llm_quantizer.validate import HFRuntime, LlamaCppRuntime, SamplerSettings, artifact_bytes, open_runtime

from .helpers import build_model

IDS = [5, 17, 42, 99, 7, 250, 3, 64, 12, 80]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    build_model("llama", root / "hf", vocab_size=320)
    gguf = write_gguf(root / "hf", root / "m-f32.gguf", "F32", progress=False)[0]
    return root / "hf", gguf


def _kl(a, b):
    p, q = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_hf_cache_steps_equal_full_forward(tiny):
    rt = HFRuntime.from_pretrained(tiny[0])
    full = rt.logits(IDS)
    steps = [rt.start(IDS[:4])] + [rt.step(t) for t in IDS[4:]]
    assert torch.allclose(torch.stack(steps), full[3:], atol=1e-4)
    assert torch.allclose(rt.logprobs(IDS).exp().sum(-1), torch.ones(len(IDS)), atol=1e-5)


def test_llama_cpp_runtime_matches_transformers(tiny):
    hf, gg = HFRuntime.from_pretrained(tiny[0]), open_runtime(tiny[1], n_ctx=64)
    assert isinstance(gg, LlamaCppRuntime) and gg.kind == "llama.cpp"
    assert _kl(hf.logits(IDS), gg.logits(IDS)) < 1e-4
    steps = torch.stack([gg.start(IDS[:4])] + [gg.step(t) for t in IDS[4:]])
    assert torch.allclose(steps, gg.logits(IDS)[3:], atol=1e-3)
    g_hf = hf.generate(IDS[:4], 12, SamplerSettings(repeat_penalty=1.2), seed=3)
    g_gg = gg.generate(IDS[:4], 12, SamplerSettings(repeat_penalty=1.2), seed=3)
    assert len(g_gg) == 12 and np.mean(np.array(g_hf) == np.array(g_gg)) > 0.7
    gg.close()


def test_open_runtime_dispatch_and_bytes(tiny, tmp_path):
    assert isinstance(open_runtime(tiny[0]), HFRuntime)
    assert artifact_bytes(tiny[1]) == tiny[1].stat().st_size
    assert artifact_bytes(tiny[0]) == sum(f.stat().st_size for f in tiny[0].glob("*.safetensors"))
    with pytest.raises(ModelSourceError):
        open_runtime(tmp_path / "missing.gguf")
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(ModelSourceError):
        open_runtime(tmp_path / "x.txt")
