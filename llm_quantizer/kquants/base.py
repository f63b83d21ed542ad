"""The codec interface every GGUF block encoder implements (legacy 32-wide types and K-quants).

Math only: torch tensors in, torch tensors (or packed numpy bytes) out, vectorized over rows and
blocks, on whatever device ``w`` lives on. No I/O.

Shapes: ``w`` is [R, C] float32 laid out as ggml sees it (a Linear weight [out, in]); C is a
multiple of ``block``. ``qw`` is the importance (llama.cpp's ``quant_weights``, i.e. the imatrix
= diag of the input Hessian), [C] float32 or None. Without it llama.cpp takes a different code
path for most types; codecs reproduce both.

Two ways to use a codec:

* ``encode(w, qw)`` -> uint8 [R, C // block * type_size]: byte for byte what
  ``ggml_quantize_chunk`` writes (same codes, same scales).
* The decomposition used by error feedback (``feedback.py``), with the params held fixed while
  the codes are re-chosen column by column on error-updated weights:
    p = codec.params(w_span, qw_span)        # per-block scales/mins, llama.cpp's search
    codes, deq = codec.quantize(x, p, cols)  # nearest codes for columns ``cols`` of the span
    raw = codec.pack(codes_all, p_all)       # exact block bytes
  ``params`` returns a dict of tensors, each shaped [R, nblocks, ...]; params of consecutive
  column spans concatenate along dim 1 (``cat_params``). ``deq`` is what the runtime computes
  (scales rounded to fp16 as stored). ``quantize(w, params(w, qw), arange(C))`` packs to the
  same bytes as ``encode`` wherever llama.cpp's codes are nearest-rounding codes for its own
  scales (all non-imatrix paths); where llama.cpp refines codes one by one inside its search
  (e.g. ``make_qp_quants``) ``encode`` is the exact one.

Optional hook: ``row_context(w) -> dict`` gives statistics of whole rows that ``params`` needs
when it is called on a column span (the legacy imatrix paths use sigma2 = mean(x^2) over the
full row): ``params(w_span, qw_span, **ctx)``. Default: {}.

Exactness pitfalls (torch CPU/CUDA vs libggml-base, which has no FMA and sums in order):
* torch's vectorized fp32 ``sqrt`` is not correctly rounded (~1 in 6 off by 1 ulp): ``sqrt_f32``.
* ``python_float / tensor`` is ``tensor.reciprocal() * float`` (two roundings): ``rdiv``;
  ``tensor / python_float`` is exact on CPU, but on CUDA it multiplies by 1/c: ``divc``.
  ``tensor / tensor`` is exact everywhere.
* sums must follow llama.cpp's sequential order: loop over positions, vectorized over blocks
  (``torch.sum``/``cumsum`` reorder or accumulate in double).
* torch.round is half-to-even like ggml's nearest_int; C roundf (Q8_0) is half-away.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

Params = dict[str, torch.Tensor]


class Codec(ABC):
    """One ggml block type. Subclasses set the class attributes and the three methods."""

    name: str = ""        # ggml type name, e.g. "Q4_0" (gguf.GGMLQuantizationType[name])
    block: int = 0        # weights per block (32 legacy, 256 K-quants)
    type_size: int = 0    # bytes per block
    group: int = 0        # columns sharing one scale inside a block (== block for legacy types)
    needs_imatrix: bool = False

    # ---- the decomposition ---------------------------------------------------------------
    @abstractmethod
    def params(self, w: torch.Tensor, qw: torch.Tensor | None) -> Params:
        """Per-block parameters for w [R, C] (C % block == 0): tensors [R, C // block, ...]."""

    @abstractmethod
    def quantize(self, x: torch.Tensor, p: Params, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (int32, [R, n]) and dequantized values (float32, [R, n]) of x [R, n], where
        column j of x is column ``cols[j]`` of the span ``p`` was computed for."""

    @abstractmethod
    def pack(self, codes: torch.Tensor, p: Params) -> np.ndarray:
        """Block bytes from codes [R, C] and params over the whole row: uint8 [R, C//block*type_size]."""

    # ---- optional hooks for error feedback (feedback.py) ----------------------------------
    def nearest(self, x: torch.Tensor, p: Params, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``quantize``, but each code is the nearest point of the grid the runtime decodes
        (stored scales), not llama.cpp's rounding rule (which may round with another inverse
        scale than the stored one). Default: ``quantize``."""
        return self.quantize(x, p, cols)

    def dequantize(self, codes: torch.Tensor, p: Params) -> torch.Tensor:
        """What the runtime decodes from codes [R, C] and params over the whole row."""
        raise NotImplementedError

    refit_width: int = 0   # columns sharing the refittable params (0: no refit)

    def refit_basis(self, codes: torch.Tensor, p: Params) -> torch.Tensor:
        """B [R, C, K] with deq[r, c] = sum_k theta[r, c // refit_width, k] * B[r, c, k], where
        theta are the float params stored as fp16 (scale, and min where the type has one)."""
        raise NotImplementedError

    def refit_theta(self, p: Params) -> torch.Tensor:
        """The current theta [R, C // refit_width, K] of ``p``."""
        raise NotImplementedError

    def with_theta(self, p: Params, theta: torch.Tensor) -> Params:
        """Params with theta (already fp16-representable) replacing the stored float params."""
        raise NotImplementedError

    # ---- conveniences --------------------------------------------------------------------
    def encode(self, w: torch.Tensor, qw: torch.Tensor | None = None) -> np.ndarray:
        """Exact llama.cpp bytes (nearest rounding, no feedback)."""
        w = check_rows(self, w)
        qw = None if qw is None else torch.as_tensor(qw, dtype=torch.float32, device=w.device).reshape(-1)
        p = self.params(w, qw)
        codes, _ = self.quantize(w, p, torch.arange(w.shape[1], device=w.device))
        return self.pack(codes, p)

    def fake_quantize(self, w: torch.Tensor, qw: torch.Tensor | None = None) -> torch.Tensor:
        """Dequantized nearest-rounding weights (what ``decode(encode(w))`` gives)."""
        w = check_rows(self, w)
        qw = None if qw is None else torch.as_tensor(qw, dtype=torch.float32, device=w.device).reshape(-1)
        return self.quantize(w, self.params(w, qw), torch.arange(w.shape[1], device=w.device))[1]

    def row_context(self, w: torch.Tensor) -> dict:
        """Whole-row statistics ``params`` needs when it is given a column span (see module doc)."""
        return {}

    def row_size(self, n_per_row: int) -> int:
        return n_per_row // self.block * self.type_size

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} block={self.block} bytes={self.type_size}>"


def check_rows(codec: Codec, w) -> torch.Tensor:
    w = torch.as_tensor(w)
    if w.dim() != 2:
        w = w.reshape(-1, w.shape[-1])
    if w.shape[1] % codec.block:
        raise ValueError(f"{codec.name} needs rows of a multiple of {codec.block} values, got {w.shape[1]}")
    return w.to(torch.float32)


def cat_params(parts: list[Params]) -> Params:
    """Params of consecutive column spans -> params of the joined span (concat on the block dim)."""
    return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}


def block_view(x: torch.Tensor, block: int) -> torch.Tensor:
    """[R, C] -> [R, C // block, block] (a view when contiguous)."""
    return x.reshape(x.shape[0], x.shape[1] // block, block)


def sqrt_f32(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 sqrt (C sqrtf): sqrt in fp64, rounded once to fp32."""
    return torch.sqrt(x.double()).float()


def rdiv(c: float, x: torch.Tensor) -> torch.Tensor:
    """c / x correctly rounded (torch's ``float / tensor`` multiplies by the reciprocal)."""
    return torch.full_like(x, c) / x


def divc(x: torch.Tensor, c: float) -> torch.Tensor:
    """x / c correctly rounded on every device (CUDA turns ``tensor / scalar`` into ``* (1/c)``)."""
    return x / torch.full_like(x, c)


# ---- byte helpers shared by codecs ---------------------------------------------------------
def fp16_bytes(x: torch.Tensor) -> np.ndarray:
    """float tensor [...] -> uint8 [..., 2] (IEEE half, little endian, round to nearest even,
    the same conversion as ggml's GGML_FP32_TO_FP16 on x86 F16C / ARM)."""
    h = x.detach().to(torch.float16).cpu().numpy()
    return h.view(np.uint8).reshape(*h.shape, 2)


def to_numpy_u8(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.uint8).cpu().numpy()


# ---- registry ------------------------------------------------------------------------------
CODECS: dict[str, Codec] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: register one instance under ``cls.name``; rejects duplicates."""
    if not cls.name or cls.name in CODECS:
        raise ValueError(f"codec name {cls.name!r} missing or already registered")
    CODECS[cls.name] = cls()
    return cls


def get_codec(name) -> Codec:
    """Codec by ggml type name or GGMLQuantizationType ("Q4_K", QT.Q4_K)."""
    key = getattr(name, "name", str(name)).upper()
    _load_all()
    if key not in CODECS:
        raise KeyError(f"no encoder for {key}; have {sorted(CODECS)}")
    return CODECS[key]


def has_codec(name) -> bool:
    _load_all()
    return getattr(name, "name", str(name)).upper() in CODECS


def _load_all() -> None:
    """Import the codec modules so their @register lines run (missing ones are skipped)."""
    import importlib

    for mod in ("legacy", "kquants", "k_quants", "q2k", "q3k", "q4k", "q5k", "q6k"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
