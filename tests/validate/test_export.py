import json
import shlex
import shutil
import subprocess

import pytest

from llm_quantizer.ggml import llama_quantize
from llm_quantizer.gguf_writer import write_gguf
from llm_quantizer.validate import SamplerSettings, validate
from llm_quantizer.validate.export import hf_generation_config, llama_cli_flags, write_llama_script, write_modelfile

from .helpers import build_model, write_eval

HOSTILE = "we ird $(touch PWNED) `id` 'q' \"d\" ;&|<>\n*?[x] \\ é"
DRY = SamplerSettings(temperature=0.7, min_p=0.05, dry_multiplier=0.8, repeat_penalty=1.1)


def _run_script(script, tmp_path, *args):
    fake = tmp_path / "fake-cli"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@"\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(script), *args], capture_output=True, cwd=tmp_path,
                         env={"LLAMA_CLI": str(fake), "PATH": "/usr/bin:/bin"})
    return out.returncode, out.stdout.decode().split("\0")[:-1]


def test_script_quotes_hostile_paths(tmp_path):
    model = tmp_path / HOSTILE / "m.gguf"
    script = write_llama_script(tmp_path / "p.sh", [(HOSTILE, str(model), DRY, "rates " + HOSTILE)])
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    rc, argv = _run_script(script, tmp_path, "-p", "hi there")
    assert rc == 0 and argv[:2] == ["-m", str(model)] and argv[-2:] == ["-p", "hi there"]
    assert argv[2:-2] == llama_cli_flags(DRY) and "--dry-sequence-breaker" in argv
    assert not (tmp_path / "PWNED").exists()
    two = write_llama_script(tmp_path / "two.sh", [("a", str(model), DRY, ""), ("b c", "/x y.gguf", SamplerSettings(), "")])
    assert subprocess.run(["bash", "-n", str(two)]).returncode == 0
    assert _run_script(two, tmp_path, "b c")[1][:2] == ["-m", "/x y.gguf"]
    assert _run_script(two, tmp_path, "nope")[0] == 2


def test_modelfile_and_generation_config(tmp_path):
    mf = write_modelfile(tmp_path / "Modelfile", "/models/a b.gguf", DRY, "rates\nFROM evil").read_text()
    lines = mf.splitlines()
    assert 'FROM "/models/a b.gguf"' in lines and "PARAMETER repeat_penalty 1.1" in lines
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER min_p 0.05" in lines
    assert not any(l.startswith("FROM evil") for l in lines) and "dry" not in " ".join(l for l in lines if l.startswith("PARAMETER"))
    gc = hf_generation_config(SamplerSettings(temperature=0.7, top_p=0.9, repeat_penalty=1.2),
                              {"eos_token_id": 2, "temperature": 0.1, "do_sample": False})
    assert gc == {"eos_token_id": 2, "do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 0.9,
                  "repetition_penalty": 1.2}
    assert hf_generation_config(SamplerSettings()) == {"do_sample": False}
    from transformers import GenerationConfig

    (tmp_path / "generation_config.json").write_text(json.dumps(gc))
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded.top_k == 0 and loaded.repetition_penalty == 1.2 and loaded.do_sample


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gg")
    build_model("llama", root / "hf", vocab_size=320)
    f32 = write_gguf(root / "hf", root / "m-f32.gguf", "F32", progress=False)[0]
    hostile = root / HOSTILE
    hostile.mkdir()
    llama_quantize(f32, hostile / "m-q8_0.gguf", "Q8_0")
    return root / "hf", f32, hostile / "m-q8_0.gguf"


def test_validate_writes_all_files_for_ggufs(ggufs, tmp_path):
    hf, f32, q8 = ggufs
    out = tmp_path / "out"
    rep = validate(hf, [f32, q8], [write_eval(tmp_path)], out, ctx=32, max_eval_tokens=96, max_new_tokens=10,
                   prompts=["Hello"], grid=[{}, DRY.to_dict(), {"repeat_penalty": 1.2}])
    assert [r["label"] for r in rep["comparison"]] == ["m-q8_0", "m-f32"]       # smallest first
    f32r = next(a for a in rep["artifacts"] if a["label"] == "m-f32")
    assert f32r["kld_mean"] < 1e-4 and f32r["same_top_pct"] > 95
    script = out / "quantization_plan" / "prevent_repetition.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    rc, argv = _run_script(script, tmp_path, "m-q8_0")
    assert rc == 0 and argv[:2] == ["-m", str(q8.resolve())]
    for label in ("m-f32", "m-q8_0"):
        assert (out / "validation" / label / "Modelfile").is_file()
        assert (out / "validation" / label / "generation_config.json").is_file()
    saved = json.loads((out / "validation" / "validation.json").read_text())
    assert saved["eval"]["ctx"] == 32 and saved["artifacts"][0]["prevention"]["chosen"]["llama.cpp"]["index"] is not None
    assert shutil.which("bash") and shlex.quote(str(q8)) in script.read_text()
