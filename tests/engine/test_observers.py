"""Observers against dense re-computations on tiny models."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import build_tiny
from llm_quantizer.engine import EngineOptions, LayerwiseEngine, Observer
from llm_quantizer.engine.observers.activations import ActivationStats
from llm_quantizer.engine.observers.importance import ImportanceObserver
from llm_quantizer.engine.observers.outliers import OutlierObserver
from llm_quantizer.engine.observers.probes import ErrorProbe, fake_quant
from llm_quantizer.model import open_source


def _engine(path):
    return LayerwiseEngine(open_source(path), EngineOptions(device="cpu", batch_size=3, progress=False))


def _ids(n=6, L=16, seed=0):
    return torch.randint(0, 256, (n, L), generator=torch.Generator().manual_seed(seed))


def _dense_inputs(model, ids):
    """Inputs of every linear and every decoder layer's input/output, from one full forward."""
    xs, hs = {}, {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, name=name: xs.setdefault(name, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, a, o, i=i: hs.setdefault(i, []).append((a[0], o[0] if isinstance(o, tuple) else o))))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}, hs


def test_imatrix_equals_dense_recomputation(tmp_path):
    model = build_tiny("llama", tmp_path / "m", dtype=torch.float32)
    ids = _ids()
    xs, _ = _dense_inputs(model, ids)
    stats = ActivationStats()
    _engine(tmp_path / "m").run(ids, [stats])
    for name, (sum_sq, count) in stats.imatrix.items():
        x = xs[name.removesuffix(".weight")].double()
        assert count == x.shape[0]
        torch.testing.assert_close(sum_sq, x.pow(2).sum(0), rtol=1e-5, atol=1e-6)


def test_importance_metrics_equal_manual(tmp_path):
    model = build_tiny("qwen2", tmp_path / "m", dtype=torch.float32)
    ids = _ids()
    _, hs = _dense_inputs(model, ids)
    imp = ImportanceObserver()
    _engine(tmp_path / "m").run(ids, [imp])
    for row in imp.per_layer:
        h_in = hs[row["layer"]][0][0].double()
        h_out = hs[row["layer"]][0][1].double()
        bi = 1 - F.cosine_similarity(h_in, h_out, dim=-1).mean()
        lim = 1 - F.cosine_similarity(h_in.flatten(1), h_out.flatten(1), dim=1).mean()
        assert abs(row["bi"] - float(bi)) < 1e-5 and abs(row["lim"] - float(lim)) < 1e-5
        assert 0 < row["zd"] < 1


def test_planted_super_weight_found(tmp_path):
    model = build_tiny("llama", tmp_path / "m", dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[37, 91] = 400.0
    model.save_pretrained(tmp_path / "m")
    obs = OutlierObserver()
    _engine(tmp_path / "m").run(_ids(), [obs])
    found = obs.super_weights()
    assert [(s["layer"], s["row"], s["col"]) for s in found] == [(1, 37, 91)]
    assert obs.massive[1]["channel"] == 37


def test_probe_error_equals_direct_output_error(tmp_path):
    model = build_tiny("llama", tmp_path / "m", dtype=torch.float32)
    ids = _ids()
    xs, _ = _dense_inputs(model, ids)
    stats, probe = ActivationStats(), ErrorProbe(["int4_g32", "int8_g32", "Q4_0", "Q8_0"])
    _engine(tmp_path / "m").run(ids, [stats, probe])
    name = "model.layers.1.mlp.down_proj.weight"
    w = dict(model.named_parameters())[name].detach()
    x = xs["model.layers.1.mlp.down_proj"]
    for fmt, got in probe.tensors[name].items():
        dw = w - fake_quant(w, fmt, None if "int" in fmt else (x.pow(2).mean(0)).numpy())
        direct = float((x @ dw.T).pow(2).sum()) / x.shape[0]
        assert abs(got["error"] - direct) <= 1e-3 * direct, fmt


class _Stop(Observer):
    name = "test-count"

    def __init__(self):
        self.layers = []

    def layer_start(self, ctx):
        self.layers.append(ctx.index)


def test_layers_streamed_in_order_and_freed(tmp_path):
    build_tiny("gemma3", tmp_path / "m", dtype=torch.float32)
    eng = _engine(tmp_path / "m")
    obs = _Stop()
    eng.run(_ids(), [obs])
    assert obs.layers == [0, 1]
    assert all(p.device.type == "meta" for p in eng.model.parameters())


def test_residual_transfer_equals_dense_recomputation(tmp_path):
    """transfer(down_proj) = per-token relative change of the layer output / the linear's own
    output error, both with the reference 4-bit g32 RTN; one dense forward per side."""
    from llm_quantizer.engine.observers.transfer import ResidualTransfer
    from llm_quantizer.quant.rtn import QuantArgs, fake_quantize

    model = build_tiny("llama", tmp_path / "m", dtype=torch.float32)
    ids = _ids()
    xs, hs = _dense_inputs(model, ids)
    obs = ResidualTransfer()
    _engine(tmp_path / "m").run(ids, [obs])
    names = {f"model.layers.{i}.{p}.weight" for i in range(2) for p in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(obs.tensors) == names and all(v > 0 for v in obs.tensors.values())
    name = "model.layers.1.mlp.down_proj"
    lin = model.get_submodule(name)
    w = lin.weight.detach().clone()
    dw = w - fake_quantize(w, QuantArgs(4, 32, True, scale_dtype="float32"))
    local = float((xs[name] @ dw.T).pow(2).sum()) / xs[name].shape[0]
    ref = torch.cat([o for _, o in hs[1]]).reshape(-1, model.config.hidden_size)
    lin.weight.data = w - dw
    _, hq = _dense_inputs(model, ids)
    got = torch.cat([o for _, o in hq[1]]).reshape(ref.shape)
    rel = float(((got - ref).pow(2).sum(-1) / ref.pow(2).sum(-1)).mean())
    assert abs(obs.tensors[name + ".weight"] - rel / local) <= 1e-3 * rel / local
