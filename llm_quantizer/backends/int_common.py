"""What the gptq and awq backends share: inputs coerced, schemes resolved, one engine pass,
a compressed-tensors ``pack-quantized`` checkpoint in ``OUT/quantized_model/``."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from .. import layout
from ..errors import CalibrationError
from ..quant.rtn import QuantArgs
from .registry import Artifact, Backend


def calibration_ids(calibration) -> torch.Tensor:
    """Token ids [N, L] from a CalibrationSet (``.input_ids``), a dict or a tensor."""
    ids = calibration
    if isinstance(calibration, dict):
        ids = calibration.get("input_ids")
    elif calibration is not None and not isinstance(calibration, torch.Tensor):
        ids = getattr(calibration, "input_ids", None)
    if ids is None:
        raise CalibrationError("this backend needs calibration data (token ids N x L); run the calibrate stage")
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.numel() == 0:
        raise CalibrationError(f"calibration ids must be a non-empty N x L matrix, got shape {tuple(ids.shape)}")
    return ids.long()


class IntBackend(Backend):
    """Base of the int backends: subclasses say which pass and how config maps to it."""

    format_family = "int"
    method: ClassVar[str]
    batch_size: int = 4
    progress: bool = True

    def default_args(self, config) -> QuantArgs:
        raise NotImplementedError

    def options(self, config):
        raise NotImplementedError

    def quantize(self, source, plan, calibration, out_dir, config=None) -> Artifact:
        from ..model import ModelSource, open_source
        from ..quant_runner import quantize_int, resolve_schemes
        from ..quant_runner.compat import check_asymmetric

        source = source if isinstance(source, ModelSource) else open_source(source)
        schemes = resolve_schemes(source, plan, None if plan is not None else self.default_args(config))
        fmt = getattr(getattr(config, self.method, None), "checkpoint_format", "compressed-tensors")
        if fmt == "compressed-tensors":
            check_asymmetric(schemes)
        ids = calibration_ids(calibration)
        device = getattr(config, "device", None) or "auto"
        dtype = getattr(getattr(config, self.method, None), "compute_dtype", "float32")
        res = quantize_int(source, self.method, schemes, ids, Path(out_dir) / layout.QUANTIZED, plan=plan,
                           options=self.options(config), device=device, batch_size=self.batch_size,
                           progress=self.progress, checkpoint_format=fmt, compute_dtype=getattr(torch, dtype))
        files = sorted(p for p in res.path.iterdir() if p.is_file())
        info = {"method": self.method, "format": "compressed-tensors pack-quantized" if fmt == "compressed-tensors"
                else f"classic {fmt}",
                "quantization_config": res.quantization_config, "seconds": res.seconds,
                "tensor_bytes": res.nbytes, "calibration_shape": list(ids.shape), "compute_dtype": dtype}
        return Artifact(self.name, res.path, files, sum(p.stat().st_size for p in files), info)
