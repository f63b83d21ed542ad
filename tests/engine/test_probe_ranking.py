"""The per-format predicted error tr(dW H dW^T) / tokens ranks formats like the measured error of
the decoder layer's output on real activations (SmolLM2-135M, wiki text)."""
from __future__ import annotations

import pytest
import torch

from conftest import TEXT

pytestmark = pytest.mark.slow

TARGETS = ((3, "self_attn.q_proj"), (10, "mlp.down_proj"), (20, "mlp.up_proj"))
def _formats() -> list[str]:
    """The measure stage's default candidates of both families, floats left out."""
    from llm_quantizer.formats import FLOAT_TYPES
    from llm_quantizer.measure.run import DEFAULT_FORMATS

    return [f for fam in ("gguf", "int") for f in DEFAULT_FORMATS[fam] if f not in FLOAT_TYPES]


def _predicted(src, ids):
    from llm_quantizer.engine import EngineOptions, LayerwiseEngine
    from llm_quantizer.engine.observers.activations import ActivationStats
    from llm_quantizer.engine.observers.probes import ErrorProbe

    names = {f"{src.layer_map.layer_prefix(i)}{p}.weight" for i, p in TARGETS}
    stats, probe = ActivationStats(), ErrorProbe(_formats(), only=names)
    eng = LayerwiseEngine(src, EngineOptions(device="cpu", batch_size=ids.shape[0], progress=False, run_head=False))
    eng.run(ids, [stats, probe])
    return probe.tensors, stats.imatrix


def _layer_io(model, layers, ids):
    """Each target layer's (hidden input, kwargs, output) from one full forward pass."""
    seen, hooks = {}, []
    for i in {i for i, _ in TARGETS}:
        def pre(mod, args, kwargs, i=i):
            seen[i] = [args[0] if args else kwargs["hidden_states"],
                       {k: v for k, v in kwargs.items() if k != "hidden_states"}]

        def post(mod, args, kwargs, out, i=i):
            seen[i].append(out[0] if isinstance(out, tuple) else out)
        hooks += [layers[i].register_forward_pre_hook(pre, with_kwargs=True),
                  layers[i].register_forward_hook(post, with_kwargs=True)]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return seen


def rank_figures(samples: int = 4, seq_len: int = 256) -> list[dict]:
    """Per target tensor: effective format -> (predicted, measured layer-output MSE), Spearman."""
    from scipy.stats import spearmanr

    from llm_quantizer.calibrate import build_calibration, load_documents
    from llm_quantizer.engine.observers.probes import fake_quant
    from llm_quantizer.engine.skeleton import load_full_model
    from llm_quantizer.model import open_source

    src = open_source("smollm2-135m")
    tok = src.tokenizer()
    ids = build_calibration(load_documents(TEXT / "wiki_en_calib.txt", tokenizer=tok), tok, samples, seq_len,
                            seed=0).input_ids
    predicted, imatrix = _predicted(src, ids)
    model = load_full_model(src, "cpu")
    layers = model.get_submodule(src.layer_map.layers_path)
    io = _layer_io(model, layers, ids)
    out = []
    for i, path in TARGETS:
        name = f"{src.layer_map.layer_prefix(i)}{path}.weight"
        lin = layers[i].get_submodule(path)
        w0 = lin.weight.detach().clone()
        sum_sq, count = imatrix[name]
        imat = (sum_sq / count).float().numpy()
        h, kw, y_ref = io[i]
        rows = {}
        for fmt, p in predicted[name].items():
            eff = p["effective"]
            if eff in rows:
                continue
            with torch.no_grad():
                lin.weight.copy_(fake_quant(w0, eff, imat))
                y = layers[i](h, **kw)
                y = y[0] if isinstance(y, tuple) else y
                lin.weight.copy_(w0)
            rows[eff] = (p["error"], float((y - y_ref).double().pow(2).mean()))
        rho = float(spearmanr([a for a, _ in rows.values()], [b for _, b in rows.values()]).statistic)
        out.append({"tensor": name, "spearman": rho, "formats": rows})
    return out


def test_probe_ranks_formats_like_layer_output_error():
    pytest.importorskip("scipy")
    pytest.importorskip("llama_cpp")
    figures = rank_figures()
    report = "\n".join(f"{f['tensor']}: spearman {f['spearman']:.3f} over {len(f['formats'])} formats" for f in figures)
    print(report)
    for f in figures:
        assert len(f["formats"]) >= 12, f
        assert f["spearman"] >= 0.9, report + "\n" + str(f["formats"])
