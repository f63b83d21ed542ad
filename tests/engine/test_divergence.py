"""The divergence observer with a weight hook == a dense re-computation on the whole model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_ARCHS, build_tiny
from llm_quantizer.engine import EngineOptions, LayerwiseEngine
from llm_quantizer.engine.observers.divergence import Divergence
from llm_quantizer.model import open_source
from llm_quantizer.validate.metrics import BaseBuilder, window_divergence


def _crude(prefix, module):
    """A stand-in quantizer: every matrix rounded to a grid of 1/16."""
    for _, p in module.named_parameters():
        if p.dim() == 2:
            p.data = torch.round(p.data * 16) / 16


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_streamed_divergence_equals_dense(arch, tmp_path):
    model = build_tiny(arch, tmp_path / arch, dtype=torch.float32)
    ids = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_logits = model(ids).logits
        _crude("", model)
        q_logits = model(ids).logits
    builder = BaseBuilder(first=0)
    for j in range(ids.shape[0]):
        builder.add(ids[j], ref_logits[j])
    dense_base = builder.build()
    dense = np.concatenate([window_divergence(dense_base, j, q_logits[j])["kld"] for j in range(ids.shape[0])])
    assert dense.mean() > 1e-4                       # the perturbation is visible

    src = open_source(tmp_path / arch)
    opts = EngineOptions(device="cpu", batch_size=2, progress=False)
    ref = LayerwiseEngine(src, opts).run(ids, [Divergence()])[0]
    base = ref.base_logprobs()
    assert torch.equal(base.windows, ids)
    torch.testing.assert_close(base.logp, dense_base.logp, atol=1e-4, rtol=1e-4)
    obs = LayerwiseEngine(src, opts).run(ids, [Divergence(base=base)], weights=_crude)[0]
    np.testing.assert_allclose(obs.per_token()["kld"], dense, rtol=1e-3, atol=1e-6)
    assert obs.result()["kld_mean"] == pytest.approx(dense.mean(), rel=1e-3)

    same = LayerwiseEngine(src, opts).run(ids, [Divergence(base=base)])[0].result()
    assert same["kld_mean"] < 1e-9 and same["same_top_pct"] == 100.0
