"""The gguf backend: F16 intermediate -> llama.cpp quantization with per-tensor types, imatrix,
and a reproduction script that is valid, quoted bash."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
from gguf import GGUFReader  # noqa: E402

from llm_quantizer.backends import get_backend  # noqa: E402
from llm_quantizer.backends.gguf import GGUFBackend, GGUFCalibration, model_name, resolve_spec  # noqa: E402
from llm_quantizer.config import RunConfig  # noqa: E402
from llm_quantizer.errors import BackendError, ConfigError  # noqa: E402
from llm_quantizer.model import open_source  # noqa: E402

from gguf_writer.tiny import build_model  # noqa: E402

HOSTILE = "out dir 'q\" $(touch PWNED) `id`"
TYPES = {"attn_q": "Q8_0", "attn_k": "Q4_K", "attn_v": "Q6_K", "attn_output": "IQ4_XS",
         "ffn_gate": "Q5_K", "ffn_up": "Q3_K", "ffn_down": "Q2_K"}


@pytest.fixture(scope="module")
def llama256(tmp_path_factory) -> Path:
    """A llama whose rows are multiples of 256, so K- and IQ-quants apply without fallback."""
    d = tmp_path_factory.mktemp("bk") / "tiny-llama"
    build_model("llama", d, vocab_size=320, hidden_size=256, intermediate_size=512, head_dim=64)
    return d


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def _plan(n_layers=2) -> dict[str, str]:
    plan = {f"blk.{i}.{k}.weight": t for i in range(n_layers) for k, t in TYPES.items()}
    plan.update({"token_embd.weight": "Q8_0", "output.weight": "Q6_K", "blk.1.ffn_down.weight": "IQ2_XXS"})
    return plan


def test_registered_with_alias():
    b = get_backend("llamacpp")
    assert isinstance(b, GGUFBackend) and b.name == "gguf" and b.format_family == "gguf"


def test_plan_types_exact_with_imatrix(llama256, tmp_path):
    imatrix = {n: np.random.default_rng(0).random(512 if "ffn_down" in n else 256).astype(np.float32) + 0.1
               for n in _plan() if n != "token_embd.weight"}
    art = get_backend("gguf").quantize(llama256, _plan(), {"imatrix": imatrix}, tmp_path, RunConfig())
    got = _types(art.path)
    assert {n: got[n] for n in _plan()} == _plan()
    assert all(t == "F32" for n, t in got.items() if n.endswith("norm.weight"))
    assert art.path == tmp_path / "quantized_model" / "tiny-llama-q4_k_m-mixed.gguf"
    assert art.nbytes == art.path.stat().st_size
    imat = tmp_path / "quantization_plan" / "imatrix.gguf"
    assert imat in art.files and "--imatrix" in (tmp_path / "quantization_plan" / "quantization_command.sh").read_text()
    with pytest.raises(BackendError):           # IQ2_XXS needs the imatrix: proves it was used
        get_backend("gguf").quantize(llama256, _plan(), None, tmp_path / "noimat", RunConfig())


def test_no_plan_uses_config_type_and_reuses_intermediate(llama256, tmp_path):
    cfg = RunConfig.from_dict({"gguf": {"llamacpp_type": "q8_0"}})
    b = get_backend("gguf")
    art = b.quantize(str(llama256), None, None, tmp_path, cfg)
    assert art.path.name == "tiny-llama-q8_0.gguf"
    assert {t for n, t in _types(art.path).items() if not n.endswith("norm.weight")} == {"Q8_0"}
    inter = Path(art.info["intermediate"])
    stamp = inter.stat().st_mtime_ns
    b.quantize(llama256, {"model.layers.0.self_attn.q_proj.weight": "Q4_0"}, None, tmp_path, cfg)  # HF name
    assert inter.stat().st_mtime_ns == stamp
    assert _types(tmp_path / "quantized_model" / "tiny-llama-q8_0-mixed.gguf")["blk.0.attn_q.weight"] == "Q4_0"


def _stub(path: Path) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys\nprint('\\x00'.join(sys.argv[1:]), end='\\x01')\n")
    path.chmod(0o755)
    return str(path)


def test_script_quotes_hostile_paths(llama256, tmp_path):
    out = tmp_path / HOSTILE
    imat_path = tmp_path / "my imatrix $(x).gguf"
    from llm_quantizer.ggml import write_imatrix

    write_imatrix(imat_path, {"blk.0.attn_q.weight": (np.ones(256, np.float32), 1.0)}, datasets=["t"])
    rules = [(r"blk\.0\.attn_(q|k)\.weight", "Q8_0"), ("ffn_.*", "Q4_K")]
    art = get_backend("gguf").quantize(llama256, rules, GGUFCalibration(imatrix_path=imat_path), out, None)
    script = out / "quantization_plan" / "quantization_command.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "LLAMA_QUANTIZE": _stub(tmp_path / "q.py"), "CONVERT_HF_TO_GGUF": _stub(tmp_path / "c.py")}
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    convert, quant = [c.split("\x00") for c in res.stdout.split("\x01") if c]
    inter = Path(art.info["intermediate"]).resolve()
    assert convert == [str(llama256.resolve()), "--outtype", "f16", "--outfile", str(inter)]
    assert quant == ["--imatrix", str(imat_path.resolve()), "--tensor-type", r"blk\.0\.attn_(q|k)\.weight=Q8_0",
                     "--tensor-type", "ffn_.*=Q4_K", str(inter), str(art.path.resolve()), "Q4_K_M"]
    assert not list(tmp_path.rglob("PWNED"))


def test_resolve_spec_forms():
    from llm_quantizer.plan import LlamaQuantizeSpec

    assert resolve_spec(None).ftype == "Q4_K_M" and resolve_spec(None).label == "q4_k_m"
    spec = resolve_spec({"blk.0.attn_q.weight": "q8_0"})
    assert spec.tensor_types == ((r"^blk\.0\.attn_q\.weight$", "Q8_0"),)
    compiled = resolve_spec(LlamaQuantizeSpec("Q5_K_M", ((r"blk\.0\.", "q6_k"),)))
    assert (compiled.ftype, compiled.tensor_types) == ("Q5_K_M", ((r"blk\.0\.", "Q6_K"),))
    with pytest.raises(ConfigError):
        resolve_spec({"x": "Q8_0"}, RunConfig.from_dict({"gguf": {"llamacpp_type": "f16"}}))
    with pytest.raises(ConfigError):
        resolve_spec(42)
    assert GGUFCalibration.coerce("a.gguf").imatrix_path == Path("a.gguf")
    assert GGUFCalibration.coerce({"imatrix_path": "b"}).imatrix_path == Path("b")
    assert GGUFCalibration.coerce(None) == GGUFCalibration()


@pytest.mark.slow
def test_smollm2_q4_k_m_says_paris(tmp_path):
    """The already-quantized example: dequantized -> F16 -> Q4_K_M; greedy text stays coherent."""
    import llama_cpp

    try:
        src = open_source("smollm2-135m")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"example model not installed: {e}")
    assert model_name(src) == "SmolLM2-135M-Instruct"
    art = get_backend("gguf").quantize(src, None, None, tmp_path, RunConfig())
    assert art.info["source_quantized"] and "already quantized" in (
        tmp_path / "quantization_plan" / "quantization_command.sh").read_text()
    assert art.info["tensor_type_counts"].get("Q4_K", 0) > 0
    llm = llama_cpp.Llama(str(art.path), n_ctx=128, verbose=False)
    text = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    print(f"smollm2 q4_k_m: {art.nbytes} bytes, {text!r}")
    assert "Paris" in text


@pytest.fixture(scope="module")
def quantized_source(llama256, tmp_path_factory) -> Path:
    """A quantized GGUF of the tiny llama (K-quants, Q5_0 and Q8_0 layer tensors) used as a source."""
    d = tmp_path_factory.mktemp("qsrc")
    plan = {f"blk.{i}.{k}.weight": t for i in range(2)
            for k, t in {"attn_q": "Q4_K", "attn_k": "Q5_0", "attn_v": "Q6_K", "attn_output": "Q4_K",
                         "ffn_gate": "Q3_K", "ffn_up": "Q8_0", "ffn_down": "Q5_K"}.items()}
    return get_backend("gguf").quantize(llama256, plan, None, d, RunConfig()).path


def _data(path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in GGUFReader(path).tensors}


def test_quantized_source_keeps_its_bytes_where_the_type_is_unchanged(quantized_source, tmp_path):
    from llm_quantizer.engine.observers.probes import stored_types
    from llm_quantizer.ggml import llama_quantize

    src = open_source(quantized_source)
    assert stored_types(src)["model.layers.0.self_attn.q_proj.weight"] == "Q4_K"
    before = _data(quantized_source)
    plan = {n: t for n, (t, _) in before.items() if n.startswith("blk.") and not n.endswith("norm.weight")}
    plan.update({"blk.0.attn_q.weight": "Q8_0", "blk.1.ffn_up.weight": "Q4_K"})   # two change type
    art = get_backend("gguf").quantize(src, plan, None, tmp_path / "out", RunConfig())
    after = _data(art.path)
    changed = {"blk.0.attn_q.weight", "blk.1.ffn_up.weight"}
    assert after["blk.0.attn_q.weight"][0] == "Q8_0" and after["blk.1.ffn_up.weight"][0] == "Q4_K"
    kept = {n for n in plan if n not in changed}
    assert all(after[n] == before[n] for n in kept)
    assert art.info["kept_source_tensors"] >= len(kept)
    # what llama.cpp alone makes of the dequantized source: not the source's bytes everywhere
    llama_only = tmp_path / "llama-only.gguf"
    llama_quantize(Path(art.info["intermediate"]), llama_only, "Q4_K_M", tuple(
        (f"^{n.replace('.', '[.]')}$", t) for n, t in plan.items()), None)
    alone = _data(llama_only)
    assert any(alone[n] != before[n] for n in kept)
    # the script's step 3 (gguf-py) turns llama.cpp's file into ours
    script = (tmp_path / "out" / "quantization_plan" / "quantization_command.sh").read_text()
    step3 = script[script.index("# 3. tensors already"):]
    expected = art.path.read_bytes()
    art.path.write_bytes(llama_only.read_bytes())
    res = subprocess.run(["bash", "-c", f"set -euo pipefail\n{step3}"], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr
    assert art.path.read_bytes() == expected
