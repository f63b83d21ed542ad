"""The resumable run on a tiny model: interrupted during measure, rerun resumes."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from gguf_writer.tiny import build_model, corpus
from llm_quantizer import api, pipeline
from llm_quantizer.config import RunConfig


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    build_model("llama", root / "model")
    (root / "calib.txt").write_text("\n\n".join(corpus(300, seed=3)), encoding="utf-8")
    return root


def _cfg(root, out):
    return RunConfig(model=str(root / "model"), output_dir=str(out), backend="gguf", budget="0.5",
                     calibration={"data": [str(root / "calib.txt")], "samples": 4, "seq_len": 32})


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_interrupted_run_resumes(tiny_run_inputs, tmp_path, monkeypatch):
    root = tiny_run_inputs
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    pipeline.run_pipeline(_cfg(root, ref_out), log=lambda m: None)

    real_measure = api.measure

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "measure", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(_cfg(root, out), log=lambda m: None)
    assert not (out / "measurements.json").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]

    monkeypatch.setattr(api, "measure", real_measure)
    calls, log = [], []
    for stage in ("analyze", "calibrate"):
        monkeypatch.setattr(api, stage, lambda *a, stage=stage, **k: calls.append(stage))
    pipeline.run_pipeline(_cfg(root, out), log=log.append)
    assert calls == []                       # analyze and calibrate were not redone
    assert "[analyze] up to date, skipped" in log and "[calibrate] up to date, skipped" in log
    assert "[measure] running" in log

    (ref_gguf,) = (ref_out / "quantized_model").glob("*.gguf")
    (gguf,) = (out / "quantized_model").glob("*.gguf")
    assert _sha(ref_gguf) == _sha(gguf)
    plans = [json.loads((d / "quantization_plan/quantization_plan.json").read_text()) for d in (ref_out, out)]
    assert [t["format"] for t in plans[0]["tensors"]] == [t["format"] for t in plans[1]["tensors"]]
    assert plans[0]["totals"]["bytes"] == plans[1]["totals"]["bytes"]

    val = json.loads((out / "validation/validation.json").read_text())
    (art,) = val["artifacts"]
    assert art["path"].endswith(".gguf") and "quantized_model" in art["path"] and art["kld_mean"] > 0 and 0 < art["same_top_pct"] <= 100
    assert val["eval"]["files"][0]["path"] != str(root / "calib.txt")
    assert (out / "report.html").exists() and "KL" in (out / "report.html").read_text()
    assert oct((out / "run_config.json").stat().st_mode & 0o777) != oct(0o600)   # not mkstemp's private mode

    log.clear()
    pipeline.run_pipeline(_cfg(root, out), log=log.append)
    assert all("skipped" in m or m.startswith("[report]") for m in log), log


def test_run_script_is_valid_and_quoted(tmp_path):
    cfg = RunConfig(model="/models/it's $(rm -rf ~) `x` dir", output_dir=str(tmp_path), budget="5bpw")
    script = pipeline.write_run_script(cfg, tmp_path)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    body = text.split("<<'LLM_QUANTIZER_CONFIG'\n", 1)[1].split("\nLLM_QUANTIZER_CONFIG", 1)[0]
    assert RunConfig.model_validate_json(body).model == cfg.model


def test_measure_probes_follow_the_backend(tiny_run_inputs, tmp_path):
    """rounding="gptq": the int formats' errors come from GPTQ rounding (below nearest's); backend
    gguf: every GGUF format carries llama.cpp's activation rounding error, F32 none."""
    root = tiny_run_inputs
    src = api._source(str(root / "model"))
    api.calibrate(src, tmp_path, data=[str(root / "calib.txt")], samples=4, seq_len=32)
    fm = ["int3_g32", "int4_g32"]
    near = api.measure(src, tmp_path, backend="gptq", formats=fm).measurements
    gp = api.measure(src, tmp_path, backend="gptq", formats=fm, rounding="gptq").measurements
    assert near["probe_rounding"] == "nearest" and gp["probe_rounding"] == "gptq"
    pairs = [(a["errors"], b["errors"]) for a, b in zip(near["tensors"], gp["tensors"]) if a["layer"] is not None
             and a["errors"]]
    assert pairs and all(b[f] < a[f] for a, b in pairs for f in fm)
    assert not any("runtime_errors" in t for t in gp["tensors"])
    gg = api.measure(src, tmp_path, backend="gguf", formats=["Q4_0", "Q8_0", "F32"]).measurements
    lin = [t for t in gg["tensors"] if t["layer"] is not None and t["errors"]]
    assert lin and all(0 < t["runtime_errors"]["Q4_0"] <= t["errors"]["Q4_0"] for t in lin)
    assert all(t["runtime_errors"]["F32"] == 0 == t["errors"]["F32"] for t in lin)
