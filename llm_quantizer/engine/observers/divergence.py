"""KL divergence of the streamed model's next-token distribution to a stored original.

With no ``base``, the observer records the model's own distribution (it *is* the original);
with one, it scores every calibration sequence against it in llama-perplexity's convention
(``validate.metrics``). The engine runs it with a weight hook that fake-quantizes each layer as
it is loaded, so a plan's real KL divergence costs one streamed pass, never a full model in
memory (``plan.refine``)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .base import Observer, register_observer


@register_observer
class Divergence(Observer):
    name = "divergence"

    def __init__(self, base=None, first: int = 0, softcap: Optional[float] = None):
        from ...validate.metrics import BaseBuilder

        self.base = base
        self.softcap = softcap
        self.builder = BaseBuilder(first) if base is None else None
        self.acc: dict[str, list[np.ndarray]] = {}
        self.window = 0

    def finish(self, final):
        from ...validate.metrics import window_divergence

        with torch.no_grad():
            for h, ids in zip(final.hidden, final.input_ids):
                for j in range(h.shape[0]):
                    logits = final.lm_head(h[j]).float()
                    if self.softcap:
                        logits = torch.tanh(logits / self.softcap) * self.softcap
                    if self.builder is not None:
                        self.builder.add(ids[j], logits)
                    else:
                        for key, v in window_divergence(self.base, self.window, logits.cpu()).items():
                            self.acc.setdefault(key, []).append(v)
                    self.window += 1

    def base_logprobs(self):
        """The recorded original (only when run without a base)."""
        return self.builder.build()

    def per_token(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.acc.items()}

    def result(self) -> dict:
        from ...validate.metrics import summarize

        return summarize(self.per_token()) if self.acc else {}
