"""How to run each quantized model: llama.cpp, Ollama, transformers, vLLM (commands run from the
output directory; every shell argument quoted)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Optional

from .html import esc, note, pre
from .inputs import Artifact, RunFiles, as_dict, dicts

PROMPT = "Once upon a time"


def _record(run: RunFiles, art: Artifact) -> dict:
    """The validation record of ``art`` (matched by path, else by label)."""
    for r in dicts(run.validation.get("artifacts")):
        p = r.get("path")
        if isinstance(p, str) and (Path(p).name == art.path.name or r.get("label") == art.path.stem):
            return r
    return {}


def _llama_flags(rec: dict) -> list[str]:
    settings = as_dict(as_dict(as_dict(as_dict(rec.get("prevention")).get("chosen")).get("llama.cpp")).get("settings"))
    if not settings:
        return []
    try:
        from ..validate.export import llama_cli_flags
        from ..validate.sampler import SamplerSettings

        return llama_cli_flags(SamplerSettings.from_dict(settings))
    except Exception:           # settings from another version: show the command without them
        return []


def _own_file(run: RunFiles, rec: dict, name: str) -> Optional[str]:
    label = rec.get("label")
    p = run.path("validation", str(label), name) if label else None
    if p is not None and p.is_file():
        return run.rel(p)
    p = run.path("validation", name)
    return run.rel(p) if p.is_file() else None


def _ollama_name(run: RunFiles) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", run.model_name().split("/")[-1].lower()).strip("-._")
    return f"{base}-quantized" if base else "quantized"


def gguf_usage(run: RunFiles, art: Artifact) -> str:
    q, rec = shlex.quote, _record(run, art)
    f = run.rel(art.path)
    flags = _llama_flags(rec)
    llama = " ".join(["llama-cli", "-m", q(f), "-p", q(PROMPT), "-n", "128", *map(q, flags)])
    out = ["<h3>llama.cpp</h3>", pre(llama + f"\nllama-server -m {q(f)} --port 8080")]
    if flags:
        out.append(note("The sampler flags are the repetition-safe settings measured in validation."))
    if run.path("quantization_plan", "prevent_repetition.sh").is_file():
        out.append(note("Or: bash quantization_plan/prevent_repetition.sh (the same settings; "
                        "give the label first when it lists several models)."))
    mf = _own_file(run, rec, "Modelfile")
    name = _ollama_name(run)
    ollama = (f"ollama create {q(name)} -f {q(mf)}" if mf else
              f"printf 'FROM %s\\n' {q('./' + f)} > Modelfile\nollama create {q(name)} -f Modelfile")
    out += ["<h3>Ollama</h3>", pre(f"{ollama}\nollama run {q(name)} {q(PROMPT)}")]
    d, n = str(Path(f).parent), art.path.name
    out += ["<h3>transformers</h3>",
            pre("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                f"tok = AutoTokenizer.from_pretrained({d!r}, gguf_file={n!r})\n"
                f"model = AutoModelForCausalLM.from_pretrained({d!r}, gguf_file={n!r})"),
            note("transformers dequantizes a GGUF file to floating point when it loads it.")]
    ref = run.hf_ref()
    out += ["<h3>vLLM</h3>", pre(f"vllm serve {q(f)}" + (f" --tokenizer {q(ref)}" if ref else "")),
            note("vLLM's GGUF support is experimental" + ("; the tokenizer comes from the original model." if ref
                 else "; give --tokenizer the original HF model for a faster tokenizer than the GGUF's."))]
    return "".join(out)


def hf_usage(run: RunFiles, art: Artifact) -> str:
    q, rec = shlex.quote, _record(run, art)
    d = run.rel(art.path)
    gen = _own_file(run, rec, "generation_config.json")
    gen_dir = str(Path(gen).parent) if gen else None
    from ..quant_runner.ct_load import packed_embeddings

    load = (f"model = AutoModelForCausalLM.from_pretrained({d!r}, device_map=\"auto\")\n"
            if not (Path(art.path).is_dir() and packed_embeddings(art.path)) else
            "from llm_quantizer.quant_runner.ct_load import load_dequantized  # packed embedding: "
            "transformers <= 5.24 cannot load it\n" f"model = load_dequantized({d!r})\n")
    py = ("from transformers import AutoModelForCausalLM, AutoTokenizer" + (", GenerationConfig" if gen else "") + "\n"
          f"tok = AutoTokenizer.from_pretrained({d!r})\n" + load
          + (f"gen = GenerationConfig.from_pretrained({gen_dir!r})  # repetition-safe sampling\n" if gen else "")
          + f"ids = tok({PROMPT!r}, return_tensors=\"pt\").to(model.device)\n"
          + "print(tok.decode(model.generate(**ids, max_new_tokens=128"
          + (", generation_config=gen" if gen else "") + ")[0]))")
    vllm = f"vllm serve {q(d)}" + (f" --generation-config {q(gen_dir)}" if gen_dir else "")
    return ("<h3>transformers</h3>" + pre(py) + "<h3>vLLM</h3>" + pre(vllm)
            + "<h3>llama.cpp / Ollama</h3>" + note("These read GGUF: rerun with --backend gguf for a GGUF file."))


def usage_section(run: RunFiles) -> str:
    if not run.artifacts:
        return ""
    parts = [note("Commands run from this report's directory (the run's output directory).")]
    for art in run.artifacts:
        head = f"<h3>{esc(run.rel(art.path))}</h3>" if len(run.artifacts) > 1 else ""
        parts.append(head + (gguf_usage(run, art) if art.kind == "gguf" else hf_usage(run, art)))
    return "".join(parts)
