"""Classic ``quant_method: gptq`` / ``awq`` checkpoints (uniform bits): the packed tensors decode
to our fake-quant weights (a reference decoder written here from the layouts), and where
gptqmodel + optimum are installed, transformers loads them with those very weights."""
from __future__ import annotations

import json

import pytest
import torch

from llm_quantizer.errors import ConfigError
from llm_quantizer.model import open_source
from llm_quantizer.quant.rtn import QuantArgs
from llm_quantizer.quant_runner import quantize_int, resolve_schemes
from llm_quantizer.quant_runner.classic import check_classic

IDS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _unpack_rows(p: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R / per, C] -> [R, C]: value k of each word at bits ``bits * k``."""
    w = p.to(torch.int64) & 0xFFFFFFFF
    parts = [(w >> (bits * k)) & ((1 << bits) - 1) for k in range(32 // bits)]
    return torch.stack(parts, dim=1).reshape(-1, p.shape[1])


def _unpack_awq(p: torch.Tensor) -> torch.Tensor:
    """int32 [R, C / 8] (AutoAWQ order) -> [R, C]."""
    w = p.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros(p.shape[0], p.shape[1], 8, dtype=torch.int64)
    for i, o in enumerate(AWQ_ORDER):
        out[:, :, o] = (w >> (4 * i)) & 0xF
    return out.reshape(p.shape[0], -1)


def _decode(sd, module, fmt, bits):
    """Dequantized weight [out, in] from the checkpoint tensors, as the loaders define it."""
    scales = sd[f"{module}.scales"].to(torch.bfloat16)                      # [G, out]
    if fmt == "gptq":
        q = _unpack_rows(sd[f"{module}.qweight"], bits).t()                   # [out, in]
        z = (_unpack_rows(sd[f"{module}.qzeros"].t().contiguous(), bits) + 1)  # [out, G] (v1: +1)
        g_idx = sd[f"{module}.g_idx"].long()
    else:
        q = _unpack_awq(sd[f"{module}.qweight"]).t()
        z = _unpack_awq(sd[f"{module}.qzeros"]).t()
        g_idx = torch.arange(q.shape[1]) // (q.shape[1] // scales.shape[0])
    s, zz = scales.t()[:, g_idx], z[:, g_idx]
    return (q.to(torch.bfloat16) - zz.to(torch.bfloat16)) * s


def _quantize(src_dir, out, method, fmt, args):
    src = open_source(src_dir)
    return quantize_int(src, method, resolve_schemes(src, None, args), IDS, out, device="cpu", progress=False,
                        keep_fake=True, checkpoint_format=fmt)


CASES = [("gptq", "gptq", QuantArgs(4, 32, True)), ("gptq", "gptq", QuantArgs(8, 32, True)),
         ("gptq", "rtn", QuantArgs(4, 32, False)), ("awq", "awq", QuantArgs(4, 32, True)),
         ("awq", "awq", QuantArgs(4, 32, False))]


@pytest.mark.parametrize("fmt,method,args", CASES)
def test_classic_tensors_decode_to_fake_quant(tiny_llama, tmp_path, fmt, method, args):
    from safetensors.torch import load_file

    res = _quantize(tiny_llama, tmp_path / "q", method, fmt, args)
    cfg = json.loads((res.path / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == fmt and qc["bits"] == args.bits and qc["group_size"] == 32
    sd = load_file(res.path / "model.safetensors")
    for module in res.schemes:
        assert sd[f"{module}.scales"].dtype == torch.float16
        assert torch.equal(_decode(sd, module, fmt, args.bits), res.fake_state[module + ".weight"]), module
    assert "classic" in (res.path / "README.md").read_text()


@pytest.mark.parametrize("fmt,method,args", [CASES[0], CASES[3], CASES[4]])
def test_classic_loads_in_transformers_with_our_weights(tiny_llama, tmp_path, fmt, method, args):
    """gptqmodel's CPU kernels dequantize to exactly our weights (symmetric; with zero points the
    AWQ kernel rounds ``q * s - z * s`` in bfloat16: a few ulps from ``(q - z) * s``); they
    multiply in bfloat16 with their own accumulation order: logits agree to about one ulp."""
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    from transformers import AutoModelForCausalLM

    res = _quantize(tiny_llama, tmp_path / "q", method, fmt, args)
    loaded = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.bfloat16, device_map="cpu").eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    assert not ref.load_state_dict(res.fake_state, strict=False).unexpected_keys
    with torch.no_grad():
        for module in res.schemes:
            fake = res.fake_state[module + ".weight"]
            eye = torch.eye(fake.shape[1], dtype=torch.bfloat16)
            got = loaded.get_submodule(module)(eye).t()
            if args.symmetric:
                assert torch.equal(got, fake), module
            else:
                assert (got.float() - fake.float()).abs().max() <= 2 ** -7 * fake.float().abs().max(), module
        a, b = loaded(IDS).logits.float(), ref(IDS).logits.float()
    assert (a - b).abs().max().item() <= 2 * 2 ** -8 * b.abs().max().item()


@pytest.mark.parametrize("fmt,args,msg", [("gptq", QuantArgs(3, 32, True), "2/4/8-bit"),
                                          ("awq", QuantArgs(8, 32, True), "4-bit"),
                                          ("gptq", QuantArgs(4, -1, True), "group"),
                                          ("gguf", QuantArgs(4, 32, True), "not one of")])
def test_classic_refusals(fmt, args, msg):
    with pytest.raises(ConfigError, match=msg):
        check_classic(fmt, {"a": args, "b": args})


def test_classic_refuses_mixed_plans():
    with pytest.raises(ConfigError, match="uniform"):
        check_classic("gptq", {"a": QuantArgs(4, 32, True), "b": QuantArgs(8, 32, True)})
    with pytest.raises(ConfigError, match="uniform"):
        check_classic("awq", {"a": QuantArgs(4, 32, True), "b": None})
