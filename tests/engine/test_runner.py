from __future__ import annotations

import pytest
import torch

from conftest import TINY_ARCHS, build_tiny
from llm_quantizer.engine import EngineOptions, LayerwiseEngine, Observer
from llm_quantizer.model import open_source


class _Logits(Observer):
    name = "test-logits"

    def __init__(self):
        self.logits = []

    def finish(self, final):
        self.logits = [final.lm_head(h) for h in final.hidden]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_streamed_logits_equal_full_model(arch, tmp_path):
    model = build_tiny(arch, tmp_path / arch, dtype=torch.float32)
    ids = torch.randint(0, 256, (5, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    eng = LayerwiseEngine(open_source(tmp_path / arch), EngineOptions(device="cpu", batch_size=2, progress=False))
    (obs,) = eng.run(ids, [_Logits()])
    got = torch.cat(obs.logits)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
