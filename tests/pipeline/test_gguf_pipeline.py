"""End to end on the real example model: calibrate -> measure -> plan -> quantize (GGUF)."""
from __future__ import annotations

import os

import pytest

from conftest import TEXT
from llm_quantizer import cli


@pytest.mark.slow
def test_smollm2_gguf_plan_end_to_end(tmp_path, capsys):
    import gguf
    from llama_cpp import Llama

    from llm_quantizer.plan import Plan

    out = str(tmp_path / "out")
    assert cli.main(["calibrate", "smollm2-135m", "--data", str(TEXT / "wiki_en_calib.txt"),
                     "--cal-samples", "8", "--seq-len", "128", "-o", out]) == 0
    assert cli.main(["measure", "smollm2-135m", "-o", out]) == 0
    assert cli.main(["plan", "-o", out, "--budget", "5bpw"]) == 0
    assert cli.main(["quantize", "smollm2-135m", "-o", out]) == 0
    capsys.readouterr()
    plan = Plan.load(tmp_path / "out/quantization_plan/quantization_plan.json")
    (final,) = [p for p in (tmp_path / "out/quantized_model").glob("*.gguf")]
    size = os.path.getsize(final)
    assert abs(size - plan.totals.bytes) / size < 0.005, (size, plan.totals.bytes)
    assert plan.totals.bytes <= plan.totals.budget_bytes
    # the tensor types inside the file are exactly the plan's
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(final)).tensors}
    for t in plan.tensors:
        if t.gguf_name in types:
            assert types[t.gguf_name] == t.format, t.gguf_name
    # super weights were protected
    sw = {s["tensor"] for s in plan.model.get("super_weights", [])} if isinstance(plan.model, dict) else set()
    for t in plan.tensors:
        if t.name in sw:
            assert t.bits_per_weight >= 6.0
    llm = Llama(str(final), n_ctx=128, verbose=False)
    text = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert "Paris" in text
