"""The gptq and awq backends through the registry: config options honoured, Artifact returned,
the checkpoint loads with transformers."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from llm_quantizer.backends import get_backend
from llm_quantizer.config import RunConfig
from llm_quantizer.errors import CalibrationError, ConfigError

CAL = SimpleNamespace(input_ids=torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0)))


def _load_and_run(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(CAL.input_ids[:1]).logits


@pytest.mark.parametrize("name,overrides", [
    ("gptq", {"gptq.group_size": 32, "gptq.act_order": True, "gptq.bits": 3}),
    ("gptq", {"gptq.group_size": 32, "gptq.compute_dtype": "bfloat16"}),
    ("awq", {"awq.group_size": 64, "awq.zero_point": False}),
])
def test_backend_writes_loadable_checkpoint(tiny_llama, tmp_path, name, overrides):
    cfg = RunConfig(device="cpu").with_overrides(overrides)
    art = get_backend(name).quantize(str(tiny_llama), None, CAL, tmp_path, cfg)
    assert art.backend == name and art.path == tmp_path / "quantized_model"
    assert art.nbytes == sum(p.stat().st_size for p in art.files)
    qc = json.loads((art.path / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    opts = getattr(cfg, name)
    assert group["weights"]["group_size"] == opts.group_size and group["weights"]["num_bits"] == opts.bits
    info = json.loads((art.path / "llm_quantizer.json").read_text())
    assert info["method"] == name and info["calibration_tokens"] == CAL.input_ids.numel()
    assert info["compute_dtype"] == getattr(opts, "compute_dtype", "float32") == art.info["compute_dtype"]
    assert torch.isfinite(_load_and_run(art.path)).all()


def test_awq_zero_point_refused_when_transformers_cannot_load_it(tiny_llama, tmp_path):
    """transformers >= 5.23 + compressed-tensors >= 0.18 cannot load zero-point checkpoints:
    refused in one line before any work (and written, to the spec, where they load)."""
    from llm_quantizer.quant_runner.compat import asymmetric_loads

    cfg = RunConfig(device="cpu").with_overrides({"awq.group_size": 32, "awq.zero_point": True})
    if asymmetric_loads():
        art = get_backend("awq").quantize(tiny_llama, None, CAL, tmp_path, cfg)
        assert torch.isfinite(_load_and_run(art.path)).all()
        return
    with pytest.raises(ConfigError, match="zero-point") as e:
        get_backend("awq").quantize(tiny_llama, None, CAL, tmp_path, cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "quantized_model").exists()


def test_plan_json_dict_overrides_uniform_bits(tiny_llama, tmp_path):
    plan = {f"model.layers.{i}.{p}.weight": ("int8_g32" if i else "int4_g32")
            for i in range(2) for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    art = get_backend("gptq").quantize(tiny_llama, plan, CAL, tmp_path, RunConfig(device="cpu"))
    info = json.loads((art.path / "llm_quantizer.json").read_text())
    assert info["schemes"]["model.layers.0.mlp.up_proj"] == "int4_g32"
    assert info["schemes"]["model.layers.1.mlp.up_proj"] == "int8_g32"
    assert "| 1 | int8_g32 |" in (art.path / "README.md").read_text()


def test_errors(tiny_llama, tmp_path):
    with pytest.raises(CalibrationError):
        get_backend("gptq").quantize(tiny_llama, None, None, tmp_path,
                                     RunConfig(device="cpu").with_overrides({"gptq.group_size": 32}))
    # the config's default group 128 does not divide the tiny model's 64 features
    with pytest.raises(ConfigError, match="group size 128; use a group size dividing it [(]e.g. 64[)]"):
        get_backend("awq").quantize(tiny_llama, None, CAL, tmp_path, RunConfig(device="cpu"))
    assert not (tmp_path / "quantized_model").exists()
