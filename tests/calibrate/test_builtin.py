import pytest

from llm_quantizer.calibrate import load_documents
from llm_quantizer.calibrate.builtin import available, load_builtin, split_of
from llm_quantizer.errors import CalibrationError

pytestmark = pytest.mark.skipif(not available(), reason="optional corpus package not installed")


def test_builtin_split_is_disjoint_and_deterministic():
    calib, ev = load_builtin("builtin:wiki-en"), load_builtin("builtin:wiki-en", "eval")
    assert len(calib) > 8000 and 500 < len(ev) < 1500
    assert not set(calib.texts) & set(ev.texts)
    assert split_of("Paris") == split_of("Paris")
    assert load_builtin("builtin:wiki-en").texts[:5] == calib.texts[:5]


def test_builtin_mixes_with_files(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one doc\n\nanother doc", encoding="utf-8")
    docs = load_documents([str(f), "builtin:wiki-en"])
    assert docs.sources[0]["path"] == "builtin:wiki-en" and len(docs) > 8000


def test_unknown_builtin_is_one_line():
    with pytest.raises(CalibrationError, match="available: builtin:wiki-en"):
        load_builtin("builtin:klingon")
