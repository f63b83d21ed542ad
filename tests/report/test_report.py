"""report.html: self-contained, escaped, robust to partial runs; rendered in headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llm_quantizer.errors import OutputError
from llm_quantizer.report import render_report

from .fake_run import HOSTILE, KINDS, N_LAYERS, make_run

CHROMIUM = Path("/usr/bin/chromium")
PROBE = ("<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
         "const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).length;"
         "document.body.setAttribute('data-probe','images='+imgs.length+' broken='+bad);"
         "console.log('probe-done');});</script>")


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(html)
    return p.tags


def assert_png(uri: str) -> tuple[int, int]:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    img.verify()
    assert img.format == "PNG" and img.size[0] > 10 and img.size[1] > 10
    return img.size


@pytest.fixture
def full_run(tmp_path) -> Path:
    return make_run(tmp_path / "out")


def test_full_run_is_self_contained_and_escaped(full_run):
    path = render_report(full_run)
    assert path == full_run / "report.html"
    html = path.read_text()
    tags = parse(html)
    imgs = [a["src"] for t, a in tags if t == "img"]
    assert len(imgs) == 5            # layer distribution, importance x2, plan, validation
    for uri in imgs:
        assert_png(uri)
    assert not any(t in ("script", "link", "iframe", "object") for t, _ in tags)
    refs = [a[k] for _, a in tags for k in ("src", "href") if k in a]
    assert all(r.startswith(("data:", "#")) for r in refs), refs
    assert HOSTILE not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    # the plan heatmap: one coloured cell per layer x kind, the super weight starred
    cells = re.findall(r'<td style="background:#[0-9a-f]{6};color:#[0-9a-f]{3}" title=', html)
    assert len(cells) == N_LAYERS * len(KINDS)
    assert "Q6_K★" in html
    for needle in ("4.5bpw", "model.layers.1.mlp.down_proj.weight", "tiny-llama-4.5bpw",
                   "llama-cli -m quantized_model/tiny-llama-4.5bpw.gguf", "--temp 0.7",
                   "ollama create tiny-llama-quantized -f validation/tiny-llama-4.5bpw/Modelfile",
                   "AutoModelForCausalLM.from_pretrained(", "vllm serve quantized_model/tiny-llama-4.5bpw.gguf",
                   "kld_mean", "A varied answer.", "T=0.7 top_p=0.9 rep=1.1", "llm-quantizer run", "--tokenizer org/tiny-llama",
                   "run_config.json"):
        assert needle in html, needle
    assert not list(full_run.glob(".report.html.*"))     # no temp file left behind


def test_partial_run_renders(tmp_path):
    out = make_run(tmp_path / "out", stages="architecture")
    html = render_report(out).read_text()
    assert "tiny-llama" in html and 'id="overview"' in html and 'id="architecture"' in html
    assert 'id="plan"' not in html and 'id="validation"' not in html
    assert "Not in this run (yet)" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "<h1>model</h1>" in render_report(empty).read_text()


def test_malformed_inputs_cost_a_section_not_the_page(full_run):
    (full_run / "validation/validation.json").write_text(json.dumps(
        {"artifacts": [{"label": 3, "generations": "oops", "prevention": {"chosen": [1, 2]},
                        "repetition": "x", "ppl": "nan?"}], "original": [], "eval": 5}))
    (full_run / "quantization_plan/quantization_plan.json").write_text("{not json")
    imp = json.loads((full_run / "importance_analysis/importance_analysis.json").read_text())
    imp["layers"] = [1, None, {"layer": 0, "lim": "high"}]
    imp["super_weights"] = {"not": "a list"}
    (full_run / "importance_analysis/importance_analysis.json").write_text(json.dumps(imp))
    (full_run / "quantization_plan/quantization_plan.png").write_bytes(b"not a png")
    html = render_report(full_run).read_text()
    assert 'id="validation"' in html and 'id="importance"' in html and 'id="plan"' not in html
    assert "Unreadable (not a JSON object), left out: quantization_plan/quantization_plan.json" in html
    assert "No super weight found" not in html      # malformed is not the same as none
    for t, a in parse(html):
        if t == "img":
            assert_png(a["src"])


def test_hf_artifact_usage(tmp_path):
    out = make_run(tmp_path / "out", stages="architecture")
    q = out / "quantized_model"
    q.mkdir()
    (q / "config.json").write_text("{}")
    (q / "model.safetensors").write_bytes(bytes(4096))
    html = render_report(out).read_text()
    assert "vllm serve quantized_model" in html
    assert "AutoModelForCausalLM.from_pretrained(&#x27;quantized_model&#x27;" in html


def test_missing_output_dir(tmp_path):
    with pytest.raises(OutputError):
        render_report(tmp_path / "nope")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def page_problems(stderr: str) -> list[str]:
    """Console output of the page (it has no scripts, so any is an error) and load failures."""
    return [ln for ln in stderr.splitlines()
            if ("CONSOLE" in ln and "probe-done" not in ln) or "Uncaught" in ln or "ERR_" in ln]


def probed_dom(tmp_path: Path, html: str, name: str) -> tuple[str, subprocess.CompletedProcess]:
    """Chromium's DOM of ``html`` with a load-time probe counting images that failed to decode."""
    probe_page = tmp_path / name
    probe_page.write_text(html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
                          .replace("</body>", PROBE + "</body>"))
    r = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri())
    m = re.search(r'data-probe="images=(\d+) broken=(\d+)"', r.stdout)
    assert m, r.stderr[-2000:]
    return m.group(0), r


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                                   "(.ci/run installs it: apt-get install -y chromium)")
def test_chromium_renders_page(full_run, tmp_path):
    from PIL import Image, ImageStat

    report = render_report(full_run)
    shot = tmp_path / "report.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 4000)
    assert max(ImageStat.Stat(img.convert("L")).stddev) > 20           # not a blank page
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 200          # text, plots and heatmap colours
    assert page_problems(r.stderr) == []

    probe, r = probed_dom(tmp_path, report.read_text(), "probe.html")
    assert probe == 'data-probe="images=5 broken=0"'
    assert page_problems(r.stderr) == []

    # the harness itself catches a broken image, a blocked request and a script error
    bad = report.read_text().replace("<main>", '<main><img src="data:image/png;base64,AAAA">'
                                     '<img src="http://example.invalid/x.png"><script>nope()</script>', 1)
    probe, r = probed_dom(tmp_path, bad, "bad.html")
    assert probe == 'data-probe="images=7 broken=2"'
    assert any("Uncaught" in ln for ln in page_problems(r.stderr))
    assert any("example.invalid" in ln for ln in page_problems(r.stderr))
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_constraints_note_names_row_length_fallbacks():
    from llm_quantizer.report.plan_view import constraints_note
    plan = {"family": "gguf", "allowed_formats": ["Q4_K", "Q6_K"],
            "constraints": {"super_weight_min_bits": 6},
            "tensors": [{"format": "Q4_K"}, {"format": "IQ4_NL"}, {"format": "F32"}, {"format": "Q5_1"}]}
    text = constraints_note(plan)
    assert "stored as IQ4_NL, Q5_1 where llama.cpp" in text
    plan["tensors"] = [{"format": "Q4_K"}, {"format": "F32"}]
    assert "stored as" not in constraints_note(plan)


def test_refinement_table_marks_the_kept_plan():
    from llm_quantizer.report.plan_view import refinement
    assert refinement({}) == ""
    plan = {"refinement": {"chosen": "local^1", "heldout": True, "samples": 16, "seq_len": 512,
                           "quantizer": "llama.cpp (imatrix)",
                           "candidates": [{"label": "residual^1", "kld_mean": 0.067, "bytes": 100},
                                          {"label": "local^1", "kld_mean": 0.061, "bytes": 99}]}}
    html = refinement(plan)
    assert "held-out calibration text" in html and "16 x 512" in html
    rows = html.split("<tr>")[2:]
    assert "✓" not in rows[0] and "residual^1" in rows[0]
    assert "✓" in rows[1] and "local^1" in rows[1]
