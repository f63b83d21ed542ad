"""``api.validate`` / ``llm-quantizer validate``: defaults from the run config, several artifacts
compared at once, held-out text that is never the calibration text, one-line errors."""
from __future__ import annotations

import json

import pytest

from llm_quantizer import api, cli
from llm_quantizer.config import RunConfig
from validate.helpers import build_model, perturbed_copy, write_eval


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    orig = root / "orig"
    build_model("llama", orig)
    return root, orig, perturbed_copy(orig, root / "noisy", scale=0.05), perturbed_copy(orig, root / "noisier", scale=0.2)


def test_cli_validate_compares_artifacts(models, tmp_path, capsys):
    root, orig, noisy, noisier = models
    ev = write_eval(tmp_path)
    rc = cli.main(["validate", str(orig), "-o", str(tmp_path / "out"), "--artifacts", str(noisier), str(noisy),
                   str(orig), "--eval-data", str(ev), "--eval-ctx", "32", "--eval-tokens", "256",
                   "--generations", "false"])
    assert rc == 0
    rep = json.loads((tmp_path / "out/validation/validation.json").read_text())
    by = {a["label"]: a for a in rep["artifacts"]}
    assert set(by) == {"noisier", "noisy", "orig"}
    assert by["orig"]["kld_mean"] == pytest.approx(0, abs=1e-6) and by["orig"]["same_top_pct"] == 100
    assert 0 < by["noisy"]["kld_mean"] < by["noisier"]["kld_mean"]
    assert rep["options"]["ctx"] == 32 and rep["eval"]["files"][0]["path"] == str(ev)
    out = capsys.readouterr().out
    assert "kld_mean" in out and "noisier" in out


def test_validate_refuses_calibration_text_as_eval(models, tmp_path):
    root, orig, noisy, _ = models
    ev = write_eval(tmp_path)
    cfg = RunConfig(model=str(orig), output_dir=str(tmp_path), calibration={"data": [str(ev)]},
                    validation={"eval_data": [str(ev)], "ctx": 32, "eval_tokens": 128, "generations": False})
    from llm_quantizer.errors import ConfigError

    with pytest.raises(ConfigError, match="also calibration text"):
        api.validate(orig, tmp_path, artifacts=[noisy], config=cfg)


def test_validate_without_artifact_is_one_line(models, tmp_path, capsys):
    _, orig, _, _ = models
    rc = cli.main(["validate", str(orig), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no quantized model" in err


def test_builtin_eval_split_is_not_the_calibration_split():
    from llm_quantizer.calibrate.builtin import available, load_builtin

    if not available():
        pytest.skip("built-in corpus not installed")
    cal, ev = load_builtin("builtin:wiki-en"), load_builtin("builtin:wiki-en:eval")
    assert ev.sources[0]["split"] == "eval" and cal.sources[0]["sha256"] != ev.sources[0]["sha256"]
    assert not set(cal.texts) & set(ev.texts) and len(ev.texts) > 50
