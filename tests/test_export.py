"""Exports of a selection, read back and checked against each trainer's documented schema.

The schemas, as the trainers document them:

- alpaca (Stanford Alpaca, LLaMA-Factory's default): a JSON list of objects with string
  ``instruction``, ``input`` and ``output`` (optional string ``system``).
- LLaMA-Factory (data/README.md): ``dataset_info.json`` maps a dataset name to ``file_name``
  (a file in the same directory), ``formatting`` (alpaca or sharegpt), ``columns`` (alpaca:
  prompt/query/response -> column names; sharegpt: messages -> column name) and, for sharegpt,
  ``tags`` (role_tag, content_tag, user_tag, assistant_tag, system_tag). In sharegpt, an
  optional system turn comes first, then user and assistant alternate, user first, ending with
  the assistant.
- axolotl (docs/dataset-formats): ``datasets:`` entries with ``path``, ``ds_type: json`` and
  ``type``; ``type: alpaca`` rows hold ``instruction``/``input``/``output``; ``type:
  chat_template`` rows hold a list under ``field_messages`` whose items have the keys named in
  ``message_property_mappings``.
- messages (OpenAI/TRL chat): one JSON object per line with ``messages``, a list of
  ``{"role": system|user|assistant, "content": str}``, the last one the assistant's.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from smalltolarge.errors import S2LError
from smalltolarge.export import FORMATS, export_selection

ALPACA = [
    {"id": "a1", "instruction": "Add 2 and 3.", "input": "", "output": "5", "source": "math",
     "meta": {"difficulty": 1}},
    {"id": "a2", "instruction": "Translate", "input": "chat -> English", "output": "cat",
     "source": "lang", "meta": {"difficulty": 2}},
]  # fmt: skip
CHAT = [
    {"id": "c1", "source": "s", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}]},
    {"id": "c2", "source": "s", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]},
]  # fmt: skip


def _selection(tmp_path, records, suffix=".jsonl"):
    sel = tmp_path / "run" / "selections" / "sel-a"
    sel.mkdir(parents=True)
    subset = sel / f"subset{suffix}"
    if suffix == ".jsonl":
        subset.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), subset)
    (sel / "ids.txt").write_text("".join(r["id"] + "\n" for r in records))
    (sel / "summary.json").write_text(json.dumps({"name": "sel-a", "subset_file": subset.name}))
    return sel


def check_alpaca(rows):
    assert isinstance(rows, list) and rows
    for r in rows:
        assert all(isinstance(r[k], str) for k in ("instruction", "input", "output"))
        assert isinstance(r.get("system", ""), str)


def check_chat(messages, roles=("system", "user", "assistant"), role="role", content="content"):
    system, user, assistant = roles
    assert isinstance(messages, list) and messages
    assert all(isinstance(m[content], str) for m in messages)
    turns = [m[role] for m in messages]
    if turns[0] == system:
        turns = turns[1:]
    assert turns and len(turns) % 2 == 0
    assert turns[0::2] == [user] * (len(turns) // 2)
    assert turns[1::2] == [assistant] * (len(turns) // 2)


def test_alpaca_pool_every_format(tmp_path):
    sel = _selection(tmp_path, ALPACA)

    done = export_selection(sel, "alpaca")
    assert done.files == [sel / "export" / "alpaca" / "sel-a.json"] and done.n == 2
    rows = json.loads(done.files[0].read_text())
    check_alpaca(rows)
    assert rows[1] == {
        "instruction": "Translate",
        "input": "chat -> English",
        "output": "cat",
        "id": "a2",
        "source": "lang",
        "meta": {"difficulty": 2},
    }

    done = export_selection(sel, "llama-factory", tmp_path / "lf")
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    entry = info["sel-a"]
    assert entry["formatting"] == "alpaca"
    rows = json.loads((tmp_path / "lf" / entry["file_name"]).read_text())
    check_alpaca(rows)
    for r in rows:
        assert {entry["columns"][k] for k in ("prompt", "query", "response")} <= r.keys()

    done = export_selection(sel, "axolotl", tmp_path / "ax")
    stanza = yaml.safe_load(done.files[1].read_text())["datasets"][0]
    assert stanza["type"] == "alpaca" and stanza["ds_type"] == "json"
    # relative to the export folder, so the folder can be copied to the training machine
    assert (
        stanza["path"] == "sel-a.jsonl" and "relative to this folder" in done.files[1].read_text()
    )
    lines = [
        json.loads(x) for x in (done.files[1].parent / stanza["path"]).read_text().splitlines()
    ]
    check_alpaca(lines)
    assert [x["id"] for x in lines] == ["a1", "a2"]

    done = export_selection(sel, "messages", tmp_path / "m")
    lines = [json.loads(x) for x in done.files[0].read_text().splitlines()]
    for line in lines:
        check_chat(line["messages"])
    assert lines[1]["messages"] == [
        {"role": "user", "content": "Translate\n\nchat -> English"},
        {"role": "assistant", "content": "cat"},
    ]
    assert lines[1]["meta"] == {"difficulty": 2} and lines[1]["source"] == "lang"


def test_chat_pool_sharegpt_and_chat_template(tmp_path):
    sel = _selection(tmp_path, CHAT)

    export_selection(sel, "llama-factory", tmp_path / "lf")
    entry = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())["sel-a"]
    assert entry["formatting"] == "sharegpt"
    tags = entry["tags"]
    rows = json.loads((tmp_path / "lf" / entry["file_name"]).read_text())
    for r in rows:
        check_chat(
            r[entry["columns"]["messages"]],
            roles=(tags["system_tag"], tags["user_tag"], tags["assistant_tag"]),
            role=tags["role_tag"],
            content=tags["content_tag"],
        )
    assert rows[0]["messages"] == CHAT[0]["messages"]
    assert rows[1]["messages"] == CHAT[1]["messages"]
    assert rows[0]["id"] == "c1" and rows[0]["source"] == "s"

    done = export_selection(sel, "axolotl", tmp_path / "ax")
    stanza = yaml.safe_load(done.files[1].read_text())["datasets"][0]
    assert stanza["type"] == "chat_template"
    keys = stanza["message_property_mappings"]
    for line in (done.files[1].parent / stanza["path"]).read_text().splitlines():
        check_chat(json.loads(line)[stanza["field_messages"]], role=keys["role"])

    rows = json.loads(export_selection(sel, "alpaca", tmp_path / "al").files[0].read_text())
    check_alpaca(rows)
    assert rows[0]["system"] == "Be brief." and rows[0]["instruction"] == "Capital of France?"
    assert rows[0]["output"] == "Paris."


def test_parquet_subset_and_dataset_info_entries_accumulate(tmp_path):
    sel = _selection(tmp_path, [{k: v for k, v in r.items() if k != "meta"} for r in ALPACA],
                     ".parquet")  # fmt: skip
    out = tmp_path / "lf"
    (out).mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "x.json"}}))
    export_selection(sel, "llama-factory", out, name="mine")
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"other", "mine"}
    check_alpaca(json.loads((out / "mine.json").read_text()))


def test_selection_from_a_run(run_copy):
    from smalltolarge.subset import select_subset

    result = select_subset(run_copy, method="random", budget=10, seed=0)
    for fmt in FORMATS:
        done = export_selection(result.directory, fmt)
        assert done.n == 10
    rows = json.loads((result.directory / "export" / "alpaca" / f"{result.summary['name']}.json")
                      .read_text())  # fmt: skip
    assert [r["id"] for r in rows] == result.ids


def test_refusals(tmp_path):
    sel = _selection(tmp_path, ALPACA)
    with pytest.raises(S2LError, match="unknown export format"):
        export_selection(sel, "csv")
    with pytest.raises(S2LError, match="not a finished selection"):
        export_selection(tmp_path, "alpaca")


def test_plain_pools_export_as_before(tmp_path):
    """Without system prompts or multi-turn chats the exports are what they were before issue
    21 (checked byte for byte against 5583a7d's); only the axolotl path became relative."""
    single = [CHAT[0], {**CHAT[1], "messages": CHAT[1]["messages"][2:]}]
    for label, records in (("alpaca", ALPACA), ("chat", single)):
        sel = _selection(tmp_path / label, records)
        for fmt in FORMATS:
            done = export_selection(sel, fmt)
            assert done.notes == []
            meta = json.loads((done.files[0].parent / "export.json").read_text())
            assert set(meta[done.files[0].name]) == {
                "selection", "selection_fingerprint", "format", "n"
            }  # fmt: skip
        info = json.loads((sel / "export" / "llama-factory" / "dataset_info.json").read_text())
        stanza = yaml.safe_load((sel / "export" / "axolotl" / "sel-a.axolotl.yaml").read_text())
        if label == "alpaca":
            assert info["sel-a"] == {
                "file_name": "sel-a.json",
                "formatting": "alpaca",
                "columns": {"prompt": "instruction", "query": "input", "response": "output"},
            }
            assert stanza == {
                "datasets": [{"path": "sel-a.jsonl", "ds_type": "json", "type": "alpaca"}]
            }
        else:
            assert info["sel-a"]["tags"] == {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            }
            assert stanza["datasets"][0] == {
                "path": "sel-a.jsonl",
                "ds_type": "json",
                "type": "chat_template",
                "field_messages": "messages",
                "message_property_mappings": {"role": "role", "content": "content"},
                "roles_to_train": ["assistant"],
            }


def test_export_command_prints_the_trainer_settings(tmp_path, monkeypatch, capsys):
    from tests.test_bad_inputs import s2l

    sel = _selection(tmp_path, CHAT)  # c2 is a multi-turn chat
    code, out, err = s2l(monkeypatch, capsys, "export", sel, "--format", "llama-factory")
    assert code == 0, err
    assert "export: S2L scored every assistant turn of each chat: train with `mask_history: " \
        "false`" in out  # fmt: skip
    meta = json.loads((sel / "export" / "llama-factory" / "export.json").read_text())
    assert meta["sel-a.json"]["assistant_turns"] == "all"
    assert meta["sel-a.json"]["trainer_settings"][0].endswith("(LLaMA-Factory's default)")
