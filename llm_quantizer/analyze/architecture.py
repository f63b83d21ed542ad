"""Architecture report from tensor headers alone (no weights are read)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from ..model.source import ModelSource

SCHEMA_VERSION = 1


@dataclass
class KindStats:
    params: int = 0
    bytes: int = 0
    tensors: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)   # dtype -> params
    shapes: list[list[int]] = field(default_factory=list)

    def add(self, shape, dtype: str, nbytes: int, numel: int) -> None:
        self.params += numel
        self.bytes += nbytes
        self.tensors += 1
        self.dtypes[dtype] = self.dtypes.get(dtype, 0) + numel
        if list(shape) not in self.shapes:
            self.shapes.append(list(shape))


def analyze_source(src: ModelSource) -> dict:
    """Per layer and per tensor kind: parameters, bytes, dtypes and shapes, plus totals."""
    lm = src.layer_map
    per_layer: dict[int, dict[str, KindStats]] = defaultdict(lambda: defaultdict(KindStats))
    per_kind: dict[str, KindStats] = defaultdict(KindStats)
    global_: dict[str, KindStats] = defaultdict(KindStats)
    tensors = []
    for info in src.tensors.values():
        layer, kind = lm.classify(info.name)
        args = (info.shape, info.dtype, info.nbytes, info.numel)
        per_kind[kind].add(*args)
        (per_layer[layer][kind] if layer is not None else global_[kind]).add(*args)
        tensors.append({"name": info.name, "gguf_name": src.gguf_name(info.name), "layer": layer, "kind": kind,
                        "shape": list(info.shape), "dtype": info.dtype, "params": info.numel, "bytes": info.nbytes})
    total_params = sum(k.params for k in per_kind.values())
    total_bytes = sum(k.bytes for k in per_kind.values())
    embed = sum(per_kind[k].params for k in ("embed", "lm_head") if k in per_kind)
    decoder = sum(s.params for layer in per_layer.values() for s in layer.values())
    layers = [{"layer": i, "params": sum(s.params for s in per_layer[i].values()),
               "bytes": sum(s.bytes for s in per_layer[i].values()),
               "kinds": {k: asdict(v) for k, v in sorted(per_layer[i].items())}}
              for i in sorted(per_layer)]
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"ref": src.ref, "name": src.name, "source": src.kind, "model_type": src.model_type,
                  "layer_map": lm.name, "num_layers": src.num_layers, "tied_embeddings": src.tied_embeddings},
        "totals": {
            "params": total_params, "bytes": total_bytes, "tensors": len(tensors),
            "bits_per_weight": 8 * total_bytes / total_params if total_params else 0.0,
            "embedding_params": embed, "decoder_params": decoder,
            "embedding_share": embed / total_params if total_params else 0.0,
            "decoder_share": decoder / total_params if total_params else 0.0,
        },
        "per_kind": {k: asdict(v) for k, v in sorted(per_kind.items())},
        "global": {k: asdict(v) for k, v in sorted(global_.items())},
        "layers": layers,
        "tensors": tensors,
    }
