"""Tests for smalltolarge.readers: record numbering of JSONL lines, the raw view of an input,
and the one-line summary of library errors (formats and their errors are tested through
load_pool in test_data.py)."""

from __future__ import annotations

import pytest

from smalltolarge.errors import S2LError
from smalltolarge.readers import MISSING, first_line, iter_jsonl_lines, read_input


def test_iter_jsonl_lines_skips_blank_lines_and_a_bom(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"a": 2}')
    assert list(iter_jsonl_lines(str(path))) == [(0, 1, b'{"a": 1}\n'), (1, 4, b'{"a": 2}')]
    with pytest.raises(S2LError, match="no such file"):
        list(iter_jsonl_lines(str(tmp_path / "absent.jsonl")))


def test_read_input_keeps_the_input_columns(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "a", "n": 1}\n{"q": "b", "extra": null}\n', encoding="utf-8")
    raw = read_input(str(path), "train")
    assert (raw.format, raw.label, raw.n) == ("jsonl", str(path), 2)
    assert raw.columns == ["q", "n", "extra"]
    assert raw.column("n") == [1, MISSING]
    assert raw.column("extra") == [MISSING, None]
    assert raw.where(1) == f"{path} line 2"


def test_first_line_keeps_a_list_after_a_colon():
    message = first_line(ValueError("Unrecognized tokenizer. Should be from one of:\n  a\n  b"))
    assert message == "Unrecognized tokenizer. Should be from one of: a b"
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("x" * 400)) == "x" * 297 + "..."
