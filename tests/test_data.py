"""Tests for smalltolarge.data: every input format and schema, errors, round trips, subsets."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smalltolarge.data import (
    NORMALISED_COLUMNS,
    Pool,
    load_pool,
    load_saved_pool,
    save_pool,
    write_subset,
)
from smalltolarge.errors import S2LError
from smalltolarge.runs import RunDir

ALPACA = [
    {"id": "a1", "instruction": "Add 2 and 2.", "input": "", "output": "4", "source": "math"},
    {
        "id": "a2",
        "instruction": "Translate.",
        "input": "bonjour",
        "output": "hello",
        "source": "mt",
    },
    {
        "id": "a3",
        "instruction": "Name a colour — ünïcode.",
        "input": "",
        "output": "blue",
        "source": "misc",
    },
    {"id": "a4", "instruction": "Say hi.", "input": "", "output": "hi\nthere", "source": "chat"},
]


# --------------------------------------------------------------------------------------------
# fixture writers
# --------------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list, *, blank_lines: bool = False) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if blank_lines:
        lines = ["", *lines[:1], "   ", *lines[1:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_parquet(path: Path, records: list) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_csv(path: Path, records: list) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def save_dataset(path: Path, records: list, split: str | None = None) -> Path:
    dataset = datasets.Dataset.from_list(records)
    if split is not None:
        dataset = datasets.DatasetDict({split: dataset, "other": dataset.select([0])})
    dataset.save_to_disk(str(path))
    return path


def column(pool: Pool, name: str) -> list:
    return pool.dataset[name][:]


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    # load_dataset caches what it builds; keep that inside the test's directory.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------


def test_jsonl_alpaca_values_and_schema(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", ALPACA, blank_lines=True))
    assert pool.format == "jsonl"
    assert pool.schema == {
        "kind": "alpaca",
        "prompt": "instruction",
        "input": "input",
        "response": "output",
        "source": "source",
        "id": "id",
        "split": None,
        "system": None,
    }
    assert tuple(pool.dataset.column_names) == NORMALISED_COLUMNS
    assert len(pool) == 4
    assert pool.ids == ["a1", "a2", "a3", "a4"]
    assert column(pool, "row") == [0, 1, 2, 3]  # blank lines are not records
    assert column(pool, "instruction")[2] == "Name a colour — ünïcode."
    assert column(pool, "input") == ["", "bonjour", "", ""]
    assert column(pool, "response") == ["4", "hello", "blue", "hi\nthere"]
    assert column(pool, "messages") == [""] * 4
    assert pool.has_sources and pool.sources() == ["math", "mt", "misc", "chat"]
    assert pool.skipped == []
    assert len(pool.fingerprint) == 16 and int(pool.fingerprint, 16) >= 0


@pytest.mark.parametrize(
    ("name", "writer", "fmt"),
    [
        ("pool.jsonl", write_jsonl, "jsonl"),
        ("pool_lines.json", write_jsonl, "jsonl"),  # JSONL content under a .json name
        ("pool.json", write_json, "json"),
        ("pool.parquet", write_parquet, "parquet"),
        ("pool.csv", write_csv, "csv"),
        ("saved", save_dataset, "hf_disk"),
    ],
)
def test_every_format_gives_the_same_pool(tmp_path, name, writer, fmt):
    reference = load_pool(write_jsonl(tmp_path / "ref.jsonl", ALPACA))
    pool = load_pool(writer(tmp_path / name, ALPACA))
    assert pool.format == fmt
    assert pool.dataset.to_dict() == reference.dataset.to_dict()
    assert pool.fingerprint == reference.fingerprint


def test_saved_dataset_dict_takes_the_split(tmp_path):
    path = save_dataset(tmp_path / "dd", ALPACA, split="validation")
    pool = load_pool(path, split="validation")
    assert pool.format == "hf_disk" and pool.schema["split"] == "validation"
    assert pool.ids == ["a1", "a2", "a3", "a4"]
    with pytest.raises(S2LError, match=r"no split 'train'.*validation, other"):
        load_pool(path)


def test_local_directory_through_load_dataset(tmp_path):
    data_dir = tmp_path / "hubdir"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", ALPACA)
    pool = load_pool(data_dir)
    assert pool.format == "hub" and pool.schema["split"] == "train"
    assert pool.ids == ["a1", "a2", "a3", "a4"]
    assert pool.fingerprint == load_pool(write_jsonl(tmp_path / "p.jsonl", ALPACA)).fingerprint


def test_hub_name_failure_is_one_line(monkeypatch):
    def offline(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub\n(more detail)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr("smalltolarge.readers.check_hub_name", lambda name, kind: None)
    with pytest.raises(S2LError) as info:
        load_pool("someorg/somedata", split="test")
    assert str(info.value) == (
        "someorg/somedata: datasets.load_dataset(split='test') failed: "
        "Couldn't reach 'someorg/somedata' on the Hub"
    )


def test_missing_path_and_unknown_extension(tmp_path):
    with pytest.raises(S2LError, match=r"nope\.jsonl: no such file"):
        load_pool(tmp_path / "nope.jsonl")
    text = tmp_path / "pool.txt"
    text.write_text("hello\n")
    with pytest.raises(S2LError, match=r"pool\.txt: unsupported file type '\.txt'"):
        load_pool(text)


# --------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------


def test_alpaca_without_input_column(tmp_path):
    records = [{"instruction": "Q1", "output": "R1"}, {"instruction": "Q2", "output": "R2"}]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records))
    assert pool.schema["kind"] == "alpaca" and pool.schema["input"] is None
    assert pool.ids == ["0", "1"]  # no id column: the row index
    assert column(pool, "input") == ["", ""]
    assert not pool.has_sources and pool.sources() == ["", ""]


def test_alpaca_record_without_input_key(tmp_path):
    records = [
        {"instruction": "Q1", "input": "ctx", "output": "R1"},
        {"instruction": "Q2", "output": "R2"},
    ]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records))
    assert column(pool, "input") == ["ctx", ""]


def test_qa_with_int_answers(tmp_path):
    records = [{"question": "2+2?", "answer": 4}, {"question": "pi?", "answer": 3.14}]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records))
    assert pool.schema["kind"] == "qa"
    assert column(pool, "instruction") == ["2+2?", "pi?"]
    assert column(pool, "response") == ["4", "3.14"]


@pytest.mark.parametrize("response_key", ["completion", "response"])
def test_prompt_completion(tmp_path, response_key):
    records = [{"prompt": "P", response_key: "C"}]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records))
    assert pool.schema["kind"] == "prompt_completion"
    assert pool.schema["response"] == response_key
    assert (column(pool, "instruction"), column(pool, "response")) == (["P"], ["C"])


CHATS = [
    {
        "id": "c1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
        ],
    },
    {
        "id": "c2",
        "messages": [
            {"role": "user", "content": "One"},
            {"role": "assistant", "content": "Two"},
            {"role": "user", "content": "Three"},
            {"role": "assistant", "content": "Four"},
            {"role": "user", "content": "dangling"},
        ],
    },
]


def test_messages_schema(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "chat.jsonl", CHATS))
    assert pool.schema["kind"] == "messages"
    assert column(pool, "instruction") == ["Hi?", "user: One\n\nassistant: Two\n\nuser: Three"]
    assert column(pool, "response") == ["Hello.", "Four"]
    assert column(pool, "input") == ["", ""]
    assert json.loads(column(pool, "messages")[0]) == CHATS[0]["messages"][:2]
    assert json.loads(column(pool, "messages")[1]) == CHATS[1]["messages"][:3]


def test_messages_same_fingerprint_from_parquet_and_csv(tmp_path):
    reference = load_pool(write_jsonl(tmp_path / "chat.jsonl", CHATS))
    from_parquet = load_pool(write_parquet(tmp_path / "chat.parquet", CHATS))
    as_strings = [{"id": r["id"], "messages": json.dumps(r["messages"])} for r in CHATS]
    from_csv = load_pool(write_csv(tmp_path / "chat.csv", as_strings))
    assert from_parquet.fingerprint == from_csv.fingerprint == reference.fingerprint


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ("not a list", "malformed messages"),
        ([{"role": "user"}], "malformed messages"),
        ([{"role": "user", "content": "hi"}], r"malformed messages \(no assistant turn\)"),
        ([{"role": "assistant", "content": "hi"}], "empty prompt"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}],
            "empty response",
        ),
    ],
)
def test_malformed_messages(tmp_path, messages, problem):
    records = [*CHATS, {"id": "bad", "messages": messages}]
    with pytest.raises(S2LError, match=rf"chat\.jsonl line 3 \(id=bad\): {problem}"):
        load_pool(write_jsonl(tmp_path / "chat.jsonl", records))


def _turns(*roles: str) -> list[dict]:
    return [{"role": role, "content": f"{role} {k}"} for k, role in enumerate(roles)]


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        (("user", "user", "assistant"), "turns 1 and 2 are user then user"),
        (("assistant", "user", "assistant"), "turn 1 is an assistant turn first"),
        (("system", "assistant", "user", "assistant"), "turn 2 is an assistant turn after the"),
        (("user", "tool", "assistant"), "turns 1 and 2 are user then tool"),
        (("tool", "assistant"), "turn 1 is a tool turn first"),
        (("user", "assistant", "system", "assistant"), "turn 3 is a system turn; a system turn"),
        (("user", "assistant", "assistant"), "turns 2 and 3 are both assistant turns"),
        (("developer", "user", "assistant"), "turn 1 has the role 'developer'; the roles are"),
    ],
)
def test_chats_a_trainer_would_skip_are_refused(tmp_path, roles, problem):
    """LLaMA-Factory skips these with a log line; they are refused where the pool is read, naming
    the line and the id, or counted among the skipped with on_invalid='skip'."""
    records = [*CHATS, {"id": "bad", "messages": _turns(*roles)}]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    where = r"chat\.jsonl line 3 \(id=bad\): malformed messages \("
    with pytest.raises(S2LError, match=where + re.escape(problem)):
        load_pool(path)
    with pytest.warns(UserWarning, match="skipped 1 invalid example"):
        pool = load_pool(path, on_invalid="skip")
    assert pool.ids == ["c1", "c2"] and pool.skipped[0]["id"] == "bad"


def test_tool_turns_and_what_follows_the_last_answer(tmp_path):
    """A tool turn answers an assistant turn; turns after the last assistant turn are not
    checked (they carry no target and are dropped)."""
    ok = _turns("system", "user", "assistant", "tool", "assistant", "user", "user")
    pool = load_pool(write_jsonl(tmp_path / "chat.jsonl", [{"id": "t", "messages": ok}]))
    assert json.loads(column(pool, "messages")[0]) == ok[:4]
    assert column(pool, "response") == ["assistant 4"]


def test_explicit_columns(tmp_path):
    records = [
        {"uid": 7, "q": "Q", "ctx": "C", "a": "A", "task": "t1", "instruction": "x", "output": "y"}
    ]
    pool = load_pool(
        write_jsonl(tmp_path / "p.jsonl", records),
        prompt_column="q",
        input_column="ctx",
        response_column="a",
        source_column="task",
        id_column="uid",
    )
    assert pool.schema == {
        "kind": "explicit",
        "prompt": "q",
        "input": "ctx",
        "response": "a",
        "source": "task",
        "id": "uid",
        "split": None,
        "system": None,
    }
    row = pool.dataset[0]
    assert (row["id"], row["instruction"], row["input"], row["response"], row["source"]) == (
        "7",
        "Q",
        "C",
        "A",
        "t1",
    )


def test_unknown_column_flag_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ALPACA)
    with pytest.raises(
        S2LError,
        match=r"no column 'answer' \(from --response-column\); "
        r"columns: id, instruction, input, output, source",
    ):
        load_pool(path, response_column="answer")


def test_undetectable_schema(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "x", "label": "y"}])
    with pytest.raises(S2LError) as info:
        load_pool(path)
    message = str(info.value)
    assert "text, label" in message and "--prompt-column" in message
    assert "--response-column" in message and "\n" not in message


# --------------------------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------------------------


def test_fingerprint_changes_with_one_character_and_with_order(tmp_path):
    base = load_pool(write_jsonl(tmp_path / "a.jsonl", ALPACA)).fingerprint
    assert load_pool(write_jsonl(tmp_path / "b.jsonl", ALPACA)).fingerprint == base
    changed = [dict(r) for r in ALPACA]
    changed[2]["output"] = "bluE"
    assert load_pool(write_jsonl(tmp_path / "c.jsonl", changed)).fingerprint != base
    reordered = [ALPACA[1], ALPACA[0], *ALPACA[2:]]
    assert load_pool(write_jsonl(tmp_path / "d.jsonl", reordered)).fingerprint != base
    # moving text from one field to the next must not collide
    moved = [dict(r) for r in ALPACA]
    moved[1]["input"], moved[1]["output"] = "bonjourh", "ello"
    assert load_pool(write_jsonl(tmp_path / "e.jsonl", moved)).fingerprint != base


# --------------------------------------------------------------------------------------------
# errors and invalid examples
# --------------------------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c" "output": 1}\n')
    with pytest.raises(S2LError, match=r"pool\.jsonl line 3: not valid JSON \(Expecting ','"):
        load_pool(path)


def test_non_object_jsonl_line(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n[1, 2]\n')
    with pytest.raises(S2LError, match=r"pool\.jsonl line 2: not a JSON object \(got array\)"):
        load_pool(path)


def test_json_non_object_record(tmp_path):
    path = write_json(tmp_path / "pool.json", [ALPACA[0], "oops"])
    with pytest.raises(S2LError, match=r"pool\.json record 2: not a JSON object"):
        load_pool(path)


def test_missing_field_and_empty_response_counted(tmp_path):
    records = [
        ALPACA[0],
        {"id": "b", "instruction": "x"},
        ALPACA[1],
        {"id": "c", "instruction": "y", "output": "  "},
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    with pytest.raises(S2LError) as info:
        load_pool(path)
    assert str(info.value) == (
        f"{path} line 2 (id=b): missing field 'output' (2 invalid examples in total; "
        "fix them, or pass on_invalid='skip' to drop them)"
    )  # the CLI names --skip-invalid only where the command has it (test_bad_inputs_replaced)


def test_empty_response_and_prompt_locations(tmp_path):
    with pytest.raises(S2LError, match=r"p\.csv row 2: empty response \(1 invalid example in"):
        load_pool(
            write_csv(
                tmp_path / "p.csv",
                [{"question": "q", "answer": "a"}, {"question": "q2", "answer": ""}],
            )
        )
    with pytest.raises(S2LError, match=r"p\.parquet row 1: empty prompt"):
        load_pool(write_parquet(tmp_path / "p.parquet", [{"prompt": " ", "completion": "a"}]))
    with pytest.raises(S2LError, match=r"p\.json record 1: field 'answer' is empty \(null\)"):
        load_pool(write_json(tmp_path / "p.json", [{"question": "q", "answer": None}]))


def test_skip_drops_and_reports(tmp_path):
    records = [
        ALPACA[0],
        {"id": "b", "instruction": "x"},
        ALPACA[1],
        {"id": "c", "instruction": "y", "output": ""},
    ]
    with pytest.warns(UserWarning, match=r"skipped 2 invalid example"):
        pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", records), on_invalid="skip")
    assert pool.ids == ["a1", "a2"] and column(pool, "row") == [0, 2]
    assert pool.skipped == [
        {
            "where": f"{tmp_path / 'pool.jsonl'} line 2",
            "id": "b",
            "problem": "missing field 'output'",
        },
        {"where": f"{tmp_path / 'pool.jsonl'} line 4", "id": "c", "problem": "empty response"},
    ]


def test_all_invalid_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "x", "output": ""}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(S2LError, match="pool is empty"):
            load_pool(path, on_invalid="skip")


def test_bad_on_invalid_value(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ALPACA)
    with pytest.raises(ValueError, match="on_invalid") as info:
        load_pool(path, on_invalid="drop")
    assert not isinstance(info.value, S2LError)


def test_duplicate_ids_name_both_locations(tmp_path):
    records = [*ALPACA, {**ALPACA[1], "output": "other"}]
    with pytest.raises(
        S2LError,
        match=r"duplicate id 'a2': \S*p\.jsonl line 2 and \S*p\.jsonl "
        r"line 5",
    ):
        load_pool(write_jsonl(tmp_path / "p.jsonl", records))


# --------------------------------------------------------------------------------------------
# extra columns
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "writer", "missing"),
    [
        ("p.jsonl", write_jsonl, None),
        ("p.parquet", write_parquet, None),
        ("p.csv", write_csv, ""),
    ],
)
def test_extra_columns_follow_the_valid_examples(tmp_path, name, writer, missing):
    records = [
        {"question": "q1", "answer": "a1", "final": 1, "note": "x"},
        {"question": "q2", "answer": "", "final": 2, "note": "y"},
        {"question": "q3", "answer": "a3", "final": None, "note": "z"},
    ]
    with pytest.warns(UserWarning, match="skipped 1 invalid"):
        pool = load_pool(
            writer(tmp_path / name, records),
            on_invalid="skip",
            extra_columns=["final", "absent", "final"],
        )
    assert pool.input_columns == ["question", "answer", "final", "note"]
    assert set(pool.extra) == {"final"}
    expected = ["1", missing] if name.endswith(".csv") else [1, None]
    assert pool.extra["final"] == expected
    assert len(pool.extra["final"]) == len(pool)


def test_extra_column_absent_from_a_record_reads_as_none(tmp_path):
    records = [
        {"instruction": "a", "output": "1", "answer": "1"},
        {"instruction": "b", "output": "2"},
    ]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records), extra_columns=["answer"])
    assert pool.extra == {"answer": ["1", None]}
    assert load_pool(tmp_path / "p.jsonl").extra == {}


# --------------------------------------------------------------------------------------------
# saving and subsets
# --------------------------------------------------------------------------------------------


def test_save_and_load_saved_pool(tmp_path):
    records = [*ALPACA, {"id": "bad", "instruction": "x", "output": ""}]
    with pytest.warns(UserWarning):
        pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records), on_invalid="skip")
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(S2LError, match="no saved pool"):
        load_saved_pool(run_dir)
    save_pool(pool, run_dir)
    meta = json.loads(run_dir.pool_meta.read_text())
    assert meta["n"] == 4 and meta["fingerprint"] == pool.fingerprint and meta["format"] == "jsonl"
    loaded = load_saved_pool(run_dir)
    assert loaded.dataset.to_dict() == pool.dataset.to_dict()
    assert (
        loaded.source_path,
        loaded.format,
        loaded.schema,
        loaded.fingerprint,
        loaded.skipped,
        loaded.input_columns,
    ) == (
        pool.source_path,
        pool.format,
        pool.schema,
        pool.fingerprint,
        pool.skipped,
        pool.input_columns,
    )
    save_pool(loaded, run_dir)  # overwriting the directory it is memory-mapped from is safe
    assert load_saved_pool(run_dir).ids == pool.ids


def test_write_subset_jsonl_is_byte_identical(tmp_path):
    path = tmp_path / "pool.jsonl"
    lines = [
        b'{"instruction": "a",   "output": "1"}\r\n',
        b"\n",
        b'{ "instruction": "b", "output": 2 }\n',
        '{"instruction": "ç", "output": "3"}'.encode(),
    ]
    path.write_bytes(b"".join(lines))
    pool = load_pool(path)
    out = write_subset(pool, np.array([2, 0]), tmp_path / "out")
    assert out == tmp_path / "out" / "subset.jsonl"
    assert out.read_bytes() == lines[0] + lines[3] + b"\n"
    assert load_pool(out).dataset["instruction"][:] == ["a", "ç"]


@pytest.mark.parametrize(
    ("name", "writer", "subset_name"),
    [
        ("pool.json", write_json, "subset.json"),
        ("pool.parquet", write_parquet, "subset.parquet"),
        ("pool.csv", write_csv, "subset.csv"),
        ("saved", save_dataset, "subset"),
    ],
)
def test_write_subset_keeps_format_and_columns(tmp_path, name, writer, subset_name):
    pool = load_pool(writer(tmp_path / name, ALPACA))
    out = write_subset(pool, [3, 1], tmp_path / "out")
    assert out == tmp_path / "out" / subset_name
    expected = [ALPACA[1], ALPACA[3]]
    if subset_name == "subset.json":
        assert json.loads(out.read_text(encoding="utf-8")) == expected
    elif subset_name == "subset.parquet":
        assert pq.read_table(out).to_pylist() == expected
    elif subset_name == "subset.csv":
        with open(out, newline="", encoding="utf-8") as f:
            assert list(csv.DictReader(f)) == expected
    else:
        assert datasets.load_from_disk(str(out)).to_list() == expected
    assert load_pool(out).ids == ["a2", "a4"]


def test_write_subset_dataset_dict_and_hub(tmp_path):
    pool = load_pool(save_dataset(tmp_path / "dd", ALPACA, split="validation"), split="validation")
    out = write_subset(pool, [0], tmp_path / "out_dd")
    assert datasets.load_from_disk(str(out)).to_list() == [ALPACA[0]]

    data_dir = tmp_path / "hubdir"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", ALPACA)
    out = write_subset(load_pool(data_dir), [1, 2], tmp_path / "out_hub")
    assert out.name == "subset.jsonl"
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == ALPACA[
        1:3
    ]


def test_write_subset_rejects_bad_rows(tmp_path):
    records = [*ALPACA, {"id": "bad", "instruction": "x", "output": ""}]
    with pytest.warns(UserWarning):
        pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records), on_invalid="skip")
    with pytest.raises(S2LError, match="row 4 is not in the pool"):
        write_subset(pool, [0, 4], tmp_path / "out")
    with pytest.raises(S2LError, match="repeats row 1"):
        write_subset(pool, [1, 1], tmp_path / "out")
    assert not (tmp_path / "out" / "subset.jsonl").exists()
    write_jsonl(tmp_path / "p.jsonl", records[:3])
    with pytest.raises(S2LError, match="changed since"):
        write_subset(pool, [0], tmp_path / "out")
