"""The GPTQ pass: shared factors, stacked solves and one-thread workers change no bit."""
from __future__ import annotations

import torch

from llm_quantizer.engine import EngineOptions, LayerwiseEngine
from llm_quantizer.model import open_source
from llm_quantizer.quant.rtn import QuantArgs
from llm_quantizer.quant_runner import GPTQPass, resolve_schemes
from llm_quantizer.quant_runner.gptq_pass import run_single_threaded

IDS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))


class _Sink:
    def __init__(self):
        self.layers = {}

    def add_layer(self, prefix, tensors, quantized):
        self.layers[prefix] = quantized


def test_stacked_parallel_pass_equals_one_solve_per_linear(tiny_models):
    """Layer 0 (same inputs in both): q/k/v and gate/up stacked, stages on worker threads, vs
    each linear solved alone on this thread; mixed bits inside the q/k/v group."""
    src = open_source(tiny_models["llama"][0])
    schemes = resolve_schemes(src, None, QuantArgs(4, 32, True))
    schemes["model.layers.0.self_attn.k_proj"] = QuantArgs(8, 32, False)
    single = {}

    class Check(GPTQPass):
        def __call__(self, ctx):
            if ctx.index == 0:
                for p in ctx.linears:
                    single[p] = self.quantize_linear(ctx, p, self.args(ctx, p))
            return super().__call__(ctx)

    sink = _Sink()
    p = Check(schemes, sink, lambda prefix: [n for n in src.tensors if n.startswith(prefix)])
    LayerwiseEngine(src, EngineOptions(device="cpu", progress=False, run_head=False)).run(IDS, [p], transform=p)
    stacked = sink.layers["model.layers.0."]
    assert list(stacked) == [f"model.layers.0.{k}" for k in single]          # layer order kept
    for path, q in single.items():
        s = stacked[f"model.layers.0.{path}"]
        assert s.args == q.args
        assert torch.equal(s.codes, q.codes) and torch.equal(s.scales, q.scales) and torch.equal(s.zeros, q.zeros)


def test_run_single_threaded_keeps_order_and_restores_threads():
    n = torch.get_num_threads()
    out = run_single_threaded([lambda i=i: (i, torch.get_num_threads()) for i in range(5)])
    assert out == [(i, 1) for i in range(5)]
    assert torch.get_num_threads() == n
    assert run_single_threaded([lambda: 7], parallel=False) == [7] and torch.get_num_threads() == n
