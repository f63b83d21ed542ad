"""CLI behaviour: one-line errors, exit codes, config round trip, legacy entry point."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from llm_quantizer import cli, main as legacy
from llm_quantizer.config import RunConfig


def _run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, match):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and match in lines[0], lines[0]


def _no_final_outputs(out_dir):
    if not out_dir.exists():
        return True
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    return not files


def test_analyze_ok(tiny_llama, tmp_path, capsys):
    rc, out, _ = _run(["analyze", str(tiny_llama), "-o", str(tmp_path / "o")], capsys)
    assert rc == 0 and "2 layers" in out
    assert (tmp_path / "o/architecture_analysis/architecture_analysis.json").exists()
    assert not list((tmp_path / "o").rglob("*.tmp"))


def test_missing_path(tmp_path, capsys):
    rc, _, err = _run(["analyze", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "not found")
    assert _no_final_outputs(tmp_path / "o")


def test_dir_without_weights(tmp_path, tiny_llama, capsys):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)
    rc, _, err = _run(["analyze", str(d), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "no *.safetensors")
    assert _no_final_outputs(tmp_path / "o")


def test_unknown_architecture(tmp_path, tiny_llama, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba99"
    (d / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _run(["analyze", str(d), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "unsupported architecture 'mamba99'")
    assert _no_final_outputs(tmp_path / "o")


def test_truncated_safetensors(tmp_path, tiny_llama, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc, _, err = _run(["analyze", str(d), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "truncated")
    assert _no_final_outputs(tmp_path / "o")


def test_corrupt_header(tmp_path, tiny_llama, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:20] = b"{not json!!!"
    f.write_bytes(bytes(raw))
    rc, _, err = _run(["analyze", str(d), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "corrupt safetensors header")


def test_huge_header_length(tmp_path, tiny_llama, capsys):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama, d)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[:8] = (2**40).to_bytes(8, "little")
    f.write_bytes(bytes(raw))
    rc, _, err = _run(["analyze", str(d), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "corrupt safetensors header")


def test_gguf_bad_magic(tmp_path, capsys):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUX" + bytes(64))
    rc, _, err = _run(["analyze", str(p), "-o", str(tmp_path / "o")], capsys)
    _assert_one_line_error(rc, err, "bad magic")


def test_unwritable_output(tmp_path, tiny_llama, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = _run(["analyze", str(tiny_llama), "-o", str(blocker / "out")], capsys)
    _assert_one_line_error(rc, err, "cannot create output directory")


def test_failed_write_leaves_nothing(tmp_path, tiny_llama, monkeypatch, capsys):
    """A crash while writing the plot leaves no file under a final name and no temp file."""
    import matplotlib.figure

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    rc, _, err = _run(["analyze", str(tiny_llama), "-o", str(tmp_path / "o")], capsys)
    assert rc == 130
    assert not (tmp_path / "o/architecture_analysis/layer_distribution.png").exists()
    assert not [p for p in (tmp_path / "o").rglob("*") if p.name.startswith(".")]


def test_verbose_shows_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llm_quantizer", "analyze", str(tmp_path / "nope"), "--verbose"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = subprocess.run([sys.executable, "-m", "llm_quantizer", "analyze", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_export_then_config_is_byte_identical(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    rc, _, _ = _run(["run", "smollm2-135m", "--backend", "gptq", "--budget", "4.5bpw", "--gptq-group-size", "64",
                     "--gptq-act-order", "--data", "x.txt", "y.txt", "--awq-zero-point", "false",
                     "--export-config", str(a)], capsys)
    assert rc == 0
    rc, _, _ = _run(["run", "--config", str(a), "--export-config", str(b)], capsys)
    assert rc == 0 and a.read_bytes() == b.read_bytes()
    cfg = RunConfig.load(a)
    assert cfg.gptq.group_size == 64 and cfg.gptq.act_order and cfg.awq.zero_point is False
    assert cfg.calibration.data == ["x.txt", "y.txt"]
    # flags override the file
    rc, _, _ = _run(["run", "--config", str(a), "--gptq-group-size", "32", "--export-config", str(b)], capsys)
    assert RunConfig.load(b).gptq.group_size == 32 and RunConfig.load(b).backend == "gptq"


def test_bad_config_is_one_line(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"version": 1, "gptq": {"bits": 11}}))
    rc, _, err = _run(["run", "--config", str(p)], capsys)
    _assert_one_line_error(rc, err, "gptq.bits")
    p.write_text(json.dumps({"version": 99}))
    rc, _, err = _run(["run", "--config", str(p)], capsys)
    _assert_one_line_error(rc, err, "version 99")


def test_methods_lists_registry(capsys):
    rc, out, _ = _run(["methods"], capsys)
    assert rc == 0
    for name in ("gguf", "gptq", "awq"):
        assert name in out


def test_legacy_flags_map_onto_config(tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = legacy.main(["--model", "m", "--output-dir", str(tmp_path / "o"), "--method", "llamacpp",
                      "--llamacpp-type", "q4_k_m", "--cal-samples", "16", "--generate-calibration",
                      "--awq-group-size", "64", "--awq-zero-point", "--gptq-group-size", "32", "--gptq-act-order",
                      "--skip-importance", "--device", "cpu", "--export-config", str(out)])
    assert rc == 0
    cfg = RunConfig.load(out)
    assert (cfg.backend, cfg.gguf.llamacpp_type, cfg.calibration.samples) == ("gguf", "q4_k_m", 16)
    assert cfg.calibration.generate and cfg.skip_importance and cfg.device == "cpu"
    assert (cfg.awq.group_size, cfg.awq.zero_point, cfg.gptq.group_size, cfg.gptq.act_order) == (64, True, 32, True)
    assert legacy.main(["--list-methods"]) == 0


def test_error_model_flag_reaches_the_planner(tmp_path, capsys):
    """--error-model maps onto plan.error_model, and api.plan hands it to the planner's constraints."""
    from llm_quantizer import api
    from llm_quantizer.io import write_json
    from llm_quantizer.plan.synthetic import Shape, make_measurements

    a = tmp_path / "a.json"
    rc, _, _ = _run(["run", "smollm2-135m", "--error-model", "residual", "--export-config", str(a)], capsys)
    assert rc == 0 and RunConfig.load(a).plan.error_model == "residual"
    rc, _, err = _run(["run", "smollm2-135m", "--error-model", "global", "--export-config", str(a)], capsys)
    _assert_one_line_error(rc, err, "error_model")
    meas = make_measurements(Shape(num_layers=2, hidden=64, intermediate=128, n_heads=4, n_kv_heads=2, vocab=256),
                             ["int4_g32", "int8_g32", "BF16"], seed=1)
    for t in meas["tensors"]:
        t["transfer"] = 1.0 if t["layer"] is not None and t["quantizable"] else None
    meas["formats"] = ["int4_g32", "int8_g32", "BF16"]
    write_json(tmp_path / "measurements.json", meas)
    plan = api.plan(tmp_path, "0.9", options=RunConfig.load(a).plan.model_copy(update={"error_model": "local"}))
    assert plan.constraints.error_model == "local"
