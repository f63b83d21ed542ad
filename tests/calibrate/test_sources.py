import json

import pytest

from llm_quantizer.calibrate import load_documents
from llm_quantizer.errors import CalibrationError

from .helpers import byte_tokenizer

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _parquet(path, column, values):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: values}), path)
    return path


def test_txt_blank_line_separated(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first doc\nline two\r\n\r\n\n  \nsecond doc\n\n\n\nthird\n")
    docs = load_documents(f)
    assert list(docs) == ["first doc\nline two", "second doc", "third"]
    assert docs.sources[0]["path"] == str(f) and docs.sources[0]["documents"] == 3
    assert len(docs.sources[0]["sha256"]) == 64


def test_jsonl_text_and_messages_without_template(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"text": "plain"}, {"messages": CHAT}, {"text": "  "}])
    assert list(load_documents(f)) == ["plain", "user: hi\nassistant: hello"]


def test_jsonl_messages_with_chat_template(tmp_path):
    f = _jsonl(tmp_path / "a.jsonl", [{"messages": CHAT}])
    assert list(load_documents(f, tokenizer=byte_tokenizer(chat=True))) == ["<|user|>hi\n<|assistant|>hello\n"]
    assert list(load_documents(f, tokenizer=byte_tokenizer())) == ["user: hi\nassistant: hello"]


def test_content_parts(tmp_path):
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert list(load_documents(_jsonl(tmp_path / "a.jsonl", [{"messages": parts}]))) == ["user: ab"]


def test_parquet_text_and_messages(tmp_path):
    assert list(load_documents(_parquet(tmp_path / "t.parquet", "text", ["x", None, "y"]))) == ["x", "y"]
    f = _parquet(tmp_path / "m.parquet", "messages", [CHAT])
    assert list(load_documents(f)) == ["user: hi\nassistant: hello"]


def test_folder_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from b/z")
    (tmp_path / "a.txt").write_text("from a")
    _jsonl(tmp_path / "b" / "c.jsonl", [{"text": "from b/c"}])
    (tmp_path / "notes.md").write_text("ignored: unknown extension inside a folder")
    (tmp_path / ".hidden.txt").write_text("ignored: hidden")
    docs = load_documents(tmp_path)
    assert list(docs) == ["from a", "from b/c", "from b/z"]
    assert load_documents([tmp_path / "a.txt", tmp_path / "b"]).texts == list(docs)


def _error(path, **kw) -> str:
    with pytest.raises(CalibrationError) as e:
        load_documents(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("name,content", [
    ("latin1.txt", "café\n".encode("latin-1")),
    ("empty.txt", b""),
    ("blank.txt", b"\n \n\t\n"),
    ("empty.jsonl", b"\n"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n'),
    ("nofield.jsonl", b'{"body": "x"}\n'),
    ("badmsg.jsonl", b'{"messages": [{"content": "no role"}]}\n'),
    ("latin1.jsonl", '{"text": "café"}\n'.encode("latin-1")),
    ("data.csv", b"text\nx\n"),
    ("broken.parquet", b"not parquet"),
])
def test_errors_are_one_line_naming_the_file(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    assert str(f) in _error(f)


def test_error_messages(tmp_path):
    (tmp_path / "l.txt").write_bytes(b"ok\xff")
    assert "not UTF-8" in _error(tmp_path / "l.txt") and "offset 2" in _error(tmp_path / "l.txt")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "a"}\n\n{oops\n')
    assert f"{tmp_path / 'bad.jsonl'}:3: invalid JSON" in _error(tmp_path / "bad.jsonl")
    assert "does not exist" in _error(tmp_path / "missing.txt")
    assert "unknown calibration file type '.csv'" in _error(_write(tmp_path / "a.csv"))


def test_parquet_without_text_column(tmp_path):
    f = _parquet(tmp_path / "x.parquet", "body", ["x"])
    assert "no 'text' or 'messages' column (columns: body)" in _error(f)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    assert str(tmp_path) in _error(tmp_path)


def _write(path):
    path.write_text("x")
    return path
