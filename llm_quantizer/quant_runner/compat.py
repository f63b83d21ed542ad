"""What the installed transformers + compressed-tensors can load (versions compared with
``packaging.version``, never as strings).

Asymmetric (zero-point) ``pack-quantized`` checkpoints: transformers >= 5.23 builds the
compressed modules on the meta device, and compressed-tensors >= 0.18 then registers the
*unpacked* zero-point shape ``[out, groups]`` (its ``PackedQuantizationCompressor.compress``
packs the zero point only for real tensors); the checkpoint's spec-conforming packed zero point
``[out / (32 / bits), groups]`` is refused as a size mismatch. Measured here with transformers
5.24.0 + compressed-tensors 0.20.0; transformers <= 5.22.2 or compressed-tensors <= 0.17.1 load
them (../shared/recipes/README.md). We refuse to write a checkpoint the installed stack cannot load.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Mapping, Optional

from packaging.version import Version

from ..errors import ConfigError
from ..quant.rtn import QuantArgs


def _version(pkg: str) -> Optional[Version]:
    try:
        return Version(version(pkg))
    except PackageNotFoundError:
        return None


def asymmetric_loads() -> bool:
    """True when the installed transformers + compressed-tensors load zero-point checkpoints."""
    tf, ct = _version("transformers"), _version("compressed-tensors")
    if tf is None or ct is None:
        return True            # nothing to load with here; the checkpoint follows the spec
    return tf < Version("5.23.0") or ct < Version("0.18.0")


def check_asymmetric(schemes: Mapping[str, Optional[QuantArgs]]) -> None:
    """One-line ConfigError when a scheme is asymmetric and the installed stack cannot load it."""
    asym = sorted(m for m, a in schemes.items() if a is not None and not a.symmetric)
    if asym and not asymmetric_loads():
        raise ConfigError(
            f"{len(asym)} linear(s) use an asymmetric (zero-point) scheme, but transformers "
            f"{_version('transformers')} with compressed-tensors {_version('compressed-tensors')} cannot load "
            "zero-point pack-quantized checkpoints (zero-point size mismatch); use symmetric schemes "
            "(--awq-zero-point false, symmetric int formats) or transformers <= 5.22.2")
