"""GPTQ inside the engine: Hessians from the layer's calibration inputs, then ``gptq_quantize``.

True-sequential (the reference's ``--true-sequential``, GPTQModel's default; off by default here:
on smollm2-135m it did not help, see bench/gptq_awq_bench.py): the layer's linears
are quantized stage by stage in forward order (q/k/v, o, gate/up, down, as the engine's hooks
first saw them); before each later stage its Hessian is recomputed from the layer's cached
inputs with the earlier stages already quantized (the forward stops at the hooked linear).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from ..engine.observers.activations import shared_inputs
from ..errors import BackendError
from ..quant.gptq import HessianAccumulator, factor_hessian, gptq_quantize
from .passes import QuantPass, to_cpu_result


@dataclass(frozen=True)
class GPTQOptions:
    blocksize: int = 128
    percdamp: float = 0.01
    act_order: bool = True        # with static groups, so groups stay contiguous (no g_idx)
    true_sequential: bool = False


class _Stop(Exception):
    """Private early stop: the hooked linear's input has been taken."""


class GPTQPass(QuantPass):
    name = "gptq-pass"
    wants_linear_io = True

    def __init__(self, schemes, sink, tensor_names, options: GPTQOptions = GPTQOptions()):
        super().__init__(schemes, sink, tensor_names)
        self.options = options
        self._reset()

    def _reset(self):
        self._acc: dict[str, HessianAccumulator] = {}
        self._shared: dict[str, str] = {}
        self._order: list[str] = []           # input owners in forward order
        self._calls: list[tuple] = []         # (args, kwargs) of every layer call (references)
        self._hook = None

    def layer_start(self, ctx):
        self._reset()
        self._shared = shared_inputs(ctx.layer_map)
        if self.options.true_sequential:
            self._hook = ctx.layer.register_forward_pre_hook(
                lambda mod, args, kwargs: self._calls.append((args, kwargs)), with_kwargs=True)

    def linear_io(self, ctx, path, x, y):
        owner = self._shared.get(path, path)
        if owner not in self._order:
            self._order.append(owner)
        if path == owner and self._stage(ctx, owner):
            if path not in self._acc:
                self._acc[path] = HessianAccumulator(x.shape[-1], device=x.device)
            self._acc[path].add_batch(x)

    def layer_end(self, ctx):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _stage(self, ctx, owner) -> list[str]:
        """The quantized linears fed by ``owner``'s input."""
        return [p for p in ctx.linears if self._shared.get(p, p) == owner and self.args(ctx, p) is not None]

    def quantize_linear(self, ctx, path, args):
        stats, res = self._solve(ctx, self._shared.get(path, path), [path])
        self.stats.update(stats)
        return res[path]

    def _solve(self, ctx, owner: str, paths: list[str]):
        """The linears ``paths`` fed ``owner``'s input: H factored once, one solve per scheme with
        their weights stacked along the rows (rows are independent: the same codes as one solve
        each). Returns (stats, {path: QuantizedLinear})."""
        o = self.options
        factor = factor_hessian(self._acc[owner].H, o.percdamp, o.act_order)
        by_args: dict = {}
        for p in paths:
            by_args.setdefault(self.args(ctx, p), []).append(p)
        stats, out = {}, {}
        for args, ps in by_args.items():
            ws = [ctx.linears[p].weight.detach() for p in ps]
            res = gptq_quantize(torch.cat(ws) if len(ws) > 1 else ws[0], None, args, blocksize=o.blocksize,
                                static_groups=o.act_order, factor=factor)
            start = 0
            for p, w in zip(ps, ws):
                r = res.rows(start, start + w.shape[0])
                start += w.shape[0]
                if not r.contiguous_groups:     # cannot happen with static groups; guard the format
                    raise RuntimeError(f"GPTQ produced non-contiguous groups for {ctx.prefix}{p}")
                stats[ctx.prefix + p] = {"loss": r.loss, "percdamp": r.percdamp}
                out[p] = to_cpu_result(args, r.codes, r.scales, r.zeros)
        return stats, out

    def __call__(self, ctx):
        try:
            stages = [(owner, s) for owner in self._order if (s := self._stage(ctx, owner))]
            if self.options.true_sequential:
                results = []
                for owner, stage in stages:
                    if results:
                        self._acc[owner] = self._rehessian(ctx, owner)
                    results += run_single_threaded([partial(self._solve, ctx, owner, stage)])
                    for p, q in results[-1][1].items():
                        w = ctx.linears[p].weight
                        w.data.copy_(q.dequantize().to(w.device, w.dtype))
            else:
                # largest input first: the down projection's factor and solve take longest
                stages.sort(key=lambda st: -ctx.linears[st[0]].in_features)
                results = run_single_threaded([partial(self._solve, ctx, o, s) for o, s in stages],
                                              parallel=next(iter(ctx.linears.values())).weight.device.type == "cpu")
            stats, solved = {}, {}
            for st, res in results:
                stats.update(st)
                solved.update(res)
            missing = [p for p in ctx.linears if self.args(ctx, p) is not None and p not in solved]
            if missing:
                raise BackendError(f"GPTQ: no calibration input reached {ctx.prefix}{missing[0]}")
            done = {p: solved[p] for p in ctx.linears if p in solved}
            self.stats.update({ctx.prefix + p: stats[ctx.prefix + p] for p in done})
            with torch_threads(1):      # write-back, packing: small ops, as the solve
                self.emit(ctx, done)
            return self.propagate and bool(done)
        finally:
            self._reset()

    def _rehessian(self, ctx, owner: str) -> HessianAccumulator:
        """H of ``owner``'s input with the layer as it is now (earlier stages quantized)."""
        lin = ctx.linears[owner]
        acc = HessianAccumulator(lin.in_features, device=lin.weight.device)

        def take(mod, args):
            acc.add_batch(args[0].reshape(-1, args[0].shape[-1]))
            raise _Stop

        handle = lin.register_forward_pre_hook(take)
        try:
            with torch.no_grad():
                for args, kwargs in self._calls:
                    try:
                        ctx.layer(*args, **kwargs)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        return acc


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` on this thread inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_single_threaded(jobs, parallel: bool = True) -> list:
    """Run ``jobs`` (callables) with torch on one thread each, as many at once as torch has
    threads; results in order. GPTQ's column loop is thousands of small ops: split over 2 OpenMP
    threads each op waits for the other thread (on a loaded 2-core box, 10x the wall time of one
    thread), while one op stream per core never waits. ``parallel=False`` (CUDA): one at a time."""
    n = torch.get_num_threads()
    workers = min(n, len(jobs)) if parallel else 1

    def one(job):
        torch.set_num_threads(1)
        return job()

    try:
        if workers <= 1:
            return [one(job) for job in jobs]
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(one, jobs))
    finally:
        torch.set_num_threads(n)
