"""Backends registered ahead of their implementation: they say so in one line."""
from __future__ import annotations

from ..errors import NotBuiltYetError
from .registry import Backend, register_backend


class _Pending(Backend):
    format_family = "int"

    def quantize(self, source, plan, calibration, out_dir, config):
        raise NotBuiltYetError(f"the {self.name} backend is not built yet in this version")
