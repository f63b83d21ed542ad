"""SmolLM2-135M: the original (load_full_model) against a Q4_K_M GGUF requantized from the example."""
import time

import pytest

from conftest import TEXT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def q4km(tmp_path_factory):
    from llm_quantizer.ggml import llama_quantize
    from llm_quantizer.model import open_source

    try:
        src = open_source("smollm2-135m")
    except Exception as e:  # noqa: BLE001 - the example package is an optional extra
        pytest.skip(f"smollm2-135m not installed: {e}")
    out = tmp_path_factory.mktemp("q") / "smollm2-q4_k_m.gguf"
    llama_quantize(src.path, out, "Q4_K_M", allow_requantize=True)
    return src, out


def test_smollm2_q4_k_m_against_original(q4km, tmp_path):
    from llm_quantizer.validate import validate

    src, gguf = q4km
    t0 = time.time()
    rep = validate(src, [gguf], [TEXT / "wiki_en_eval.txt"], tmp_path, ctx=512, max_eval_tokens=1024,
                   generations=False)
    a = rep["artifacts"][0]
    print(f"\nppl original {rep['original']['ppl']:.3f}  q4_k_m {a['ppl']:.3f}  kld mean {a['kld_mean']:.4f} "
          f"median {a['kld_median']:.4f} p99 {a['kld_p99']:.4f}  same-top {a['same_top_pct']:.1f}%  "
          f"{time.time() - t0:.1f}s")
    assert rep["eval"]["scored_tokens"] == 2 * 255
    assert 5 < rep["original"]["ppl"] < 40 and 5 < a["ppl"] < 40
    assert 0 < a["kld_mean"] < 0.2 and a["same_top_pct"] > 80
    assert a["ppl"] > rep["original"]["ppl"] * 0.98
    assert (tmp_path / "validation" / "validation.png").is_file()
