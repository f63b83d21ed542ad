import json

from llm_quantizer.calibrate import build_calibration, export_calibration

from .helpers import byte_tokenizer

DOCS = [f"document number {i} says hello" for i in range(30)]


def test_exports_written_and_parseable(tmp_path):
    tok = byte_tokenizer(bos=True)
    c = build_calibration(DOCS, tok, 3, 32, seed=0)
    paths = export_calibration(c, tmp_path)
    assert set(paths) == {"imatrix", "awq", "gptq"}
    assert all(p.parent == tmp_path / "calibration_data" for p in paths.values())
    assert paths["imatrix"].read_text(encoding="utf-8") == "\n\n".join(c.texts) + "\n"
    awq = [json.loads(line) for line in paths["awq"].read_text(encoding="utf-8").splitlines()]
    assert awq == [{"text": t} for t in c.texts]
    gptq = [json.loads(line) for line in paths["gptq"].read_text(encoding="utf-8").splitlines()]
    assert [r["input_ids"] for r in gptq] == c.input_ids.tolist()
    assert all(r["attention_mask"] == [1] * 32 and set(r) == {"input_ids", "attention_mask"} for r in gptq)
    assert not list((tmp_path / "calibration_data").glob(".*"))  # no temp files left


def test_pairs_only_when_given(tmp_path):
    c = build_calibration(DOCS, byte_tokenizer(), 2, 16, seed=0)
    pairs = [{"prompt": "Say hi", "response": "hi ✓"}]
    paths = export_calibration(c, tmp_path, pairs=pairs)
    assert json.loads(paths["pairs"].read_text(encoding="utf-8")) == pairs
