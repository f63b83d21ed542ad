import warnings

import pytest
import torch

from llm_quantizer.calibrate import CalibrationSet, Documents, adds_bos, build_calibration, load_documents
from llm_quantizer.errors import CalibrationError

from .helpers import BOS, EOS, byte_tokenizer

DOCS = [f"document {i:02d} " + "abcdefghij"[i % 10] * (5 + i % 7) for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    return byte_tokenizer(bos=True)


def test_adds_bos_follows_the_tokenizer(tok, bos_tok):
    assert not adds_bos(tok) and adds_bos(bos_tok)


def test_exact_shape_and_meta(tok):
    c = build_calibration(DOCS, tok, 5, 32, seed=0)
    assert c.input_ids.shape == (5, 32) and c.input_ids.dtype == torch.int64
    assert c.meta["n_samples"] == 5 and c.meta["seq_len"] == 32 and c.meta["tokens"] == 160
    assert c.meta["seed"] == 0 and len(c.texts) == 5 and len(c.meta["sha256"]) == 64


def test_same_seed_same_ids_other_seed_differs(tok):
    a, b = (build_calibration(DOCS, tok, 4, 24, seed=7) for _ in range(2))
    assert torch.equal(a.input_ids, b.input_ids) and a.meta["sha256"] == b.meta["sha256"]
    assert not torch.equal(a.input_ids, build_calibration(DOCS, tok, 4, 24, seed=8).input_ids)


def test_bos_prepended_only_when_the_tokenizer_adds_it(tok, bos_tok):
    with_bos = build_calibration(DOCS, bos_tok, 4, 24, seed=0).input_ids
    assert (with_bos[:, 0] == BOS).all() and (with_bos[:, 1:] != BOS).all()
    assert (build_calibration(DOCS, tok, 4, 24, seed=0).input_ids != BOS).all()


def test_documents_packed_with_eos_separators(tok, bos_tok):
    for t in (tok, bos_tok):
        c = build_calibration(DOCS, t, 6, 40, seed=3)
        stream = c.input_ids[:, int(c.meta["bos"]):].reshape(-1).tolist()
        assert stream.count(EOS) == c.meta["documents_used"] - 1
        pieces = t.decode(stream).split("</s>")
        assert pieces[0] in DOCS and all(p in DOCS for p in pieces[1:-1])
        assert any(d.startswith(pieces[-1]) for d in DOCS)
        for row, text in zip(c.input_ids[:, int(c.meta["bos"]):], c.texts):  # one text piece per document
            assert text.split("\n\n") == [p for p in t.decode(row).split("</s>") if p]


def test_too_short_is_one_line_with_token_counts(tmp_path, tok):
    f = tmp_path / "small.txt"
    f.write_text("tiny text\n\nmore")
    with pytest.raises(CalibrationError) as e:
        build_calibration(load_documents(f), tok, 4, 16, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "14 tokens available, 64 needed" in msg


def test_allow_fewer_warns_and_shrinks(tok):
    with pytest.warns(UserWarning, match="only 2 of 10 samples"):
        c = build_calibration(DOCS[:4], tok, 10, 32, seed=0, allow_fewer=True)
    assert c.input_ids.shape == (2, 32) and c.meta["n_samples"] == 2 and c.meta["requested_samples"] == 10


def test_long_document_cut_keeps_the_same_tokens(tok):
    doc = "".join(f"word{i} " for i in range(3000))  # longer than the cut for 2 x 8 tokens
    c = build_calibration([doc], tok, 2, 8, seed=0)
    assert c.input_ids.reshape(-1).tolist() == tok(doc, add_special_tokens=False)["input_ids"][:16]


def test_sources_recorded(tmp_path, tok):
    docs = Documents(DOCS, [{"path": "x.txt", "sha256": "0" * 64, "documents": 40}])
    assert build_calibration(docs, tok, 2, 16, seed=0).meta["sources"] == docs.sources


def test_save_load_round_trip(tmp_path, tok):
    c = build_calibration(DOCS, tok, 3, 16, seed=1)
    folder = c.save(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["calibration.safetensors", "calibration_meta.json"]
    back = CalibrationSet.load(tmp_path)
    assert torch.equal(back.input_ids, c.input_ids) and back.meta == c.meta and back.texts == c.texts


def test_load_rejects_missing_and_tampered(tmp_path, tok):
    with pytest.raises(CalibrationError, match="no saved calibration set"):
        CalibrationSet.load(tmp_path)
    c = build_calibration(DOCS, tok, 3, 16, seed=1)
    CalibrationSet(c.input_ids + 1, c.meta, c.texts).save(tmp_path)
    with pytest.raises(CalibrationError, match="sha256 differs"):
        CalibrationSet.load(tmp_path)
    (tmp_path / "calibration_data" / "calibration.safetensors").write_bytes(b"junk")
    with pytest.raises(CalibrationError, match="unreadable"):
        CalibrationSet.load(tmp_path)


def test_no_warnings_when_enough_text(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_calibration(DOCS, tok, 2, 16, seed=0)


@pytest.mark.slow
def test_real_smollm2_wiki_64x512(tmp_path):
    import time

    from conftest import TEXT
    from llm_quantizer.model import open_source

    tok = open_source("smollm2-135m").tokenizer()
    docs = load_documents(TEXT / "wiki_en_calib.txt", tokenizer=tok)
    start = time.perf_counter()
    c = build_calibration(docs, tok, 64, 512, seed=0)
    assert time.perf_counter() - start < 5  # only the shuffled documents needed are tokenized
    assert c.input_ids.shape == (64, 512) and not c.meta["bos"]  # SmolLM2's GGUF tokenizer adds no BOS
    assert c.meta["separator_ids"] == [tok.eos_token_id] and c.meta["documents_used"] < len(docs) // 10
    c.save(tmp_path)
    assert torch.equal(CalibrationSet.load(tmp_path).input_ids, c.input_ids)
    assert torch.equal(build_calibration(docs, tok, 64, 512, seed=0).input_ids, c.input_ids)
