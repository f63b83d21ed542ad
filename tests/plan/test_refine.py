"""End-to-end plan refinement on a tiny llama: candidates, fake-quant names, the choice."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gguf_writer.tiny import build_model, corpus
from llm_quantizer import api
from llm_quantizer.calibrate.tokenize import heldout_calibration
from llm_quantizer.config import PlanOptions
from llm_quantizer.engine import EngineOptions, LayerwiseEngine
from llm_quantizer.engine.observers.divergence import Divergence
from llm_quantizer.engine.skeleton import load_full_model
from llm_quantizer.ggml.imatrix import load_imatrix_means
from llm_quantizer.model import open_source
from llm_quantizer.plan import Plan
from llm_quantizer.plan.refine import candidate_plans, fake_quant_hook
from llm_quantizer.validate.metrics import BaseBuilder, window_divergence

BUDGET = "0.4"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    build_model("llama", root / "model")
    (root / "calib.txt").write_text("\n\n".join(f"document {i}. " + t for i, t in enumerate(corpus(300, seed=3))),
                                    encoding="utf-8")
    out = root / "out"
    api.calibrate(str(root / "model"), out, data=[str(root / "calib.txt")], samples=4, seq_len=32)
    api.measure(str(root / "model"), out, backend="gguf", device="cpu")
    return root, out


def test_heldout_sequences_share_no_document(measured):
    root, out = measured
    calib = api.load_calibration(out)
    src = open_source(root / "model")
    held = heldout_calibration(calib, src.tokenizer(), 4)
    assert held.input_ids.shape == (4, 32)
    seen = lambda texts: {w for t in texts for w in t.split() if w.rstrip(".").isdigit()}  # noqa: E731
    assert seen(calib.texts) and seen(held.texts) and not seen(calib.texts) & seen(held.texts)


def test_fake_quant_hook_streamed_equals_dense(measured):
    root, out = measured
    meas = json.loads((out / "measurements.json").read_text())
    plan = candidate_plans(meas, BUDGET, api.plan(out, BUDGET).constraints, 1)[0].plan
    assert {t.format for t in plan.tensors} - {"F32", "F16"}            # something is quantized
    imat = load_imatrix_means(out / "importance_analysis" / "imatrix.gguf")
    hook = fake_quant_hook(plan, imat)
    src = open_source(root / "model")
    ids = api.load_calibration(out).input_ids
    model = load_full_model(src, "cpu")
    with torch.no_grad():
        ref = model(ids).logits
        hook("", model)                       # the whole model at once: full HF names
        q = model(ids).logits
    b = BaseBuilder(first=0)
    for j in range(len(ids)):
        b.add(ids[j], ref[j])
    base = b.build()
    dense = np.concatenate([window_divergence(base, j, q[j])["kld"] for j in range(len(ids))])
    obs = LayerwiseEngine(src, EngineOptions(device="cpu", progress=False)).run(
        ids, [Divergence(base=base)], weights=hook)[0]
    assert dense.mean() > 0
    np.testing.assert_allclose(obs.per_token()["kld"], dense, rtol=2e-3, atol=1e-7)


def test_refine_keeps_the_least_divergent_candidate(measured):
    root, out = measured
    meas = json.loads((out / "measurements.json").read_text())
    plain = api.plan(out, BUDGET)
    cands = candidate_plans(meas, BUDGET, plain.constraints, 4)
    assert len(cands) >= 2
    assert len({tuple(t.format for t in c.plan.tensors) for c in cands}) == len(cands)
    assert cands[0].label == "residual^1"     # the configured objective (auto -> residual) first
    plan = api.plan(out, BUDGET, options=PlanOptions(refine=4, refine_samples=3), model=str(root / "model"),
                    device="cpu")
    r = plan.refinement
    assert r["heldout"] and r["samples"] == 3 and r["scored_tokens"] == 3 * 31
    klds = {c["label"]: c["kld_mean"] for c in r["candidates"]}
    assert len(klds) == len(cands) and r["chosen"] == min(klds, key=klds.get)
    chosen = next(c for c in cands if c.label == r["chosen"])
    assert [t.format for t in plan.tensors] == [t.format for t in chosen.plan.tensors]
    assert all(c["bytes"] <= plan.totals.budget_bytes for c in r["candidates"])
    saved = Plan.load(out / "quantization_plan" / "quantization_plan.json")
    assert saved.refinement == r and saved == plan


def test_refine_needs_the_model(measured):
    from llm_quantizer.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the model"):
        api.plan(measured[1], BUDGET, options=PlanOptions(refine=2))
