"""The model as a skeleton: parameters on the meta device, real buffers; modules are filled
from the source one at a time and emptied again."""
from __future__ import annotations

import ctypes
import functools

import torch
from torch import nn

from ..model.source import ModelSource


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; an unavailable cuda falls back to cpu."""
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return dev


def build_skeleton(source: ModelSource, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The transformers model with every parameter on meta and buffers (rope, scales) real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    cfg = source.config
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def fill(module: nn.Module, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Load ``state`` (keys relative to ``module``) into a meta module, on ``device``.

    ``state`` is consumed: each source tensor is dropped as soon as it is converted, so the
    layer is never held twice (source dtype + compute dtype)."""
    converted = {}
    for k in list(state):
        v = state.pop(k)
        converted[k] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        del v
    module.load_state_dict(converted, strict=True, assign=True)
    if any(b.device != device for b in module.buffers()):
        module.to(device)
    release_heap()
    return module


def empty(module: nn.Module) -> None:
    """Put every parameter of ``module`` back on meta, freeing its memory."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    release_heap()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim    # glibc only
    except (OSError, AttributeError, TypeError):
        return None


_M_MMAP_THRESHOLD = -3   # mallopt parameter (malloc.h)


@functools.lru_cache(maxsize=None)
def fix_mmap_threshold(nbytes: int = 1 << 17) -> bool:
    """Serve every C allocation of ``nbytes`` or more with its own mmap, returned to the OS on free
    (glibc ``mallopt(M_MMAP_THRESHOLD)``; False where unavailable). Process-wide and permanent.

    By default glibc moves the threshold up to the largest block freed so far (up to 32 MiB), after
    which weights, Hessians and activations of varying sizes share the heap and fragment it: on a
    2 GB llama the engine's peak RSS is ~1.5x what it holds (bench/memory_bench.py). The price is
    page faults on each large temporary: ~10 % more CPU time on SmolLM2-135M."""
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError, TypeError):
        return False


def release_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB), so after
    the first layer most activations and weights come from the heap, and what one layer frees
    is not reused exactly by the next one: without this the resident set grows by ~50 MiB per
    layer of a 2 GB llama (bench/memory_bench.py)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


def load_module(source: ModelSource, model: nn.Module, path: str, device, dtype) -> nn.Module:
    """Fill the module at ``path`` from the source's tensors under that prefix."""
    module = model.get_submodule(path)
    prefix = path + "."
    state = {n[len(prefix):]: source.load(n) for n in source.tensors if n.startswith(prefix)}
    return fill(module, state, device, dtype)


def load_full_model(source: ModelSource, device: str = "auto", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The whole model resident (small models, or generation): the skeleton filled module by
    module from the same source reader the streaming loop uses."""
    dev = resolve_device(device)
    model = build_skeleton(source, dtype)
    lm = source.layer_map
    state = {n: source.load(n) for n in source.tensors}
    if source.tied_embeddings:
        state[f"{lm.lm_head_path}.weight"] = state[f"{lm.embed_path}.weight"]
    fill(model, state, dev, dtype)
    if source.tied_embeddings:
        model.tie_weights()
    return model.eval()
