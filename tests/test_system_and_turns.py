"""System prompts and multi-turn chats, as trainers see them (issue 21, part 2).

A text pool's ``system`` column reaches the prompt (in place of the Alpaca preamble, or as the
chat template's system message), the fingerprints and every export; a pool without one
tokenises bit for bit as before the column existed (digests taken with the code before it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from smalltolarge.data import load_pool, load_saved_pool, save_pool
from smalltolarge.errors import S2LError
from smalltolarge.export import export_selection
from smalltolarge.formatting import ALPACA_PROMPT_WITH_INPUT, format_prompt, tokenise_pool
from smalltolarge.models import train_bpe_tokenizer
from smalltolarge.runs import RunDir

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ALPACA = [
    {"id": "a1", "instruction": "Add 2 and 3.", "input": "", "output": "5", "source": "math"},
    {"id": "a2", "instruction": "Translate", "input": "chat", "output": "cat", "source": "lang"},
    {"id": "a3", "instruction": "Name a {colour}.", "output": "Red.", "source": "lang"},
]
QA = [
    {"question": "What is 7 x 6?", "answer": "42"},
    {"question": "Capital of Peru?", "answer": "Lima"},
]
CHAT = [
    {"id": "c1", "messages": [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}]},
    {"id": "c2", "messages": [{"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello"}]},
]  # fmt: skip
MULTI = [
    {"id": "m1", "messages": [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}]},
    {"id": "m2", "messages": [{"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Yes"}]},
]  # fmt: skip
PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

#: (pool fingerprint, tokenised fingerprint, digest of the tokenised columns) per pool and
#: template, computed with the code of 5583a7d (before system prompts and multi-turn labels):
#: a pool without a system column, and a multi-turn pool with assistant_turns="last", must
#: give exactly these.
BEFORE = {
    "alpaca/alpaca": ["ebbe8b5cb9b43e89", "59b0bb933be84534", "abf0ea4e71ae98c3"],
    "alpaca/alpaca-reference": ["ebbe8b5cb9b43e89", "9595f76e459827a6", "5e78d31846ca9e18"],
    "alpaca/chat": ["ebbe8b5cb9b43e89", "6fe6187802a8b9e5", "415b388567634402"],
    "qa/alpaca": ["83f0d7b2ef827736", "b572317fbf01abd5", "cffa7b071f46d30f"],
    "qa/alpaca-reference": ["83f0d7b2ef827736", "456173e120114bce", "19ae8307681b95de"],
    "qa/chat": ["83f0d7b2ef827736", "d78f99c61ba2d0d5", "1146b56e06eac7a2"],
    "chat/alpaca": ["309f48c19abf0c1e", "a74d98944d482a4a", "82ab33ce6eea1701"],
    "chat/alpaca-reference": ["309f48c19abf0c1e", "69fb3170da9de21b", "5b6a17ef5170c0ae"],
    "chat/chat": ["309f48c19abf0c1e", "ef5e8dd12d20f59f", "9f791f49dc8b68d5"],
    "multi/alpaca": ["289d9e68f87a6b50", "8b7da5a850c0acd7", "e455ebfd08111024"],
    "multi/alpaca-reference": ["289d9e68f87a6b50", "8edc87bc26c4a6da", "9fe74cdf0de81416"],
    "multi/chat": ["289d9e68f87a6b50", "d53af3abf270a27f", "f4f8ec7ee2bd3584"],
}
TEMPLATES = ("alpaca", "alpaca-reference", "chat")


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE (trained here, deterministic) with a chat template."""
    records = ALPACA + QA + CHAT + MULTI
    tokenizer = train_bpe_tokenizer([json.dumps(r) + ALPACA_PROMPT_WITH_INPUT for r in records] * 3,
                                    300)  # fmt: skip
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def digest(tokenised) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([tokenised.dataset.column_names, tokenised.dataset.to_dict()]).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", ["alpaca", "qa", "chat", "multi"])
def test_without_system_prompts_tokenised_bit_for_bit_as_before(tmp_path, tok, name):
    records = {"alpaca": ALPACA, "qa": QA, "chat": CHAT, "multi": MULTI}[name]
    pool = load_pool(write_jsonl(tmp_path / f"{name}.jsonl", records))
    assert "system" not in pool.input_columns and pool.schema["system"] is None
    kwargs = {"assistant_turns": "last"} if name == "multi" else {}
    for template in TEMPLATES:
        t = tokenise_pool(pool, tok, template=template, max_length=256, **kwargs)
        assert [pool.fingerprint, t.fingerprint, digest(t)] == BEFORE[f"{name}/{template}"]


# --------------------------------------------------------------------------------------------
# system prompts of text pools
# --------------------------------------------------------------------------------------------


def test_alpaca_template_system_takes_the_preamble_place():
    plain = format_prompt("Add 2 and 3.")
    assert plain.startswith(PREAMBLE + "\n\n### Instruction:\n")
    assert format_prompt("Add 2 and 3.", system="") == plain
    assert format_prompt("Add 2 and 3.", system="You are a {tutor}.") == (
        "You are a {tutor}.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    )
    assert format_prompt("Translate", "chat", system="Be terse.") == (
        "Be terse.\n\n### Instruction:\nTranslate\n\n### Input:\nchat\n\n### Response:\n"
    )
    assert format_prompt("Add.", template="alpaca-reference", system="S") == (
        "S\n\n### Instruction:\nAdd.\n\n### Response:"
    )


def test_chat_template_system_is_a_system_message(tok):
    assert format_prompt("Add.", template="chat", tokenizer=tok, system="Be terse.") == (
        "<s><|system|>\nBe terse.\n<|user|>\nAdd.\n<|assistant|>\n"
    )
    assert (
        format_prompt("Add.", template="chat", tokenizer=tok)
        == "<s><|user|>\nAdd.\n<|assistant|>\n"
    )


def with_system(records: list[dict], systems: list) -> list[dict]:
    out = []
    for r, s in zip(records, systems, strict=True):
        out.append({**r, "system": s} if s != "absent" else dict(r))
    return out


def test_system_column_reaches_pool_fingerprints_and_tokens(tmp_path, tok):
    path = write_jsonl(tmp_path / "s.jsonl", with_system(ALPACA, ["Be terse.", None, "absent"]))
    pool = load_pool(path)
    assert pool.schema["system"] == "system"
    assert pool.dataset["system"] == ["Be terse.", "", ""]
    t = tokenise_pool(pool, tok, max_length=256)
    first = tok.decode(t.dataset[0]["input_ids"][: t.dataset[0]["response_start"]])
    assert first == "Be terse.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    second = tok.decode(t.dataset[1]["input_ids"][: t.dataset[1]["response_start"]])
    assert second.startswith("Below is an instruction")

    other = load_pool(write_jsonl(tmp_path / "o.jsonl",
                                  with_system(ALPACA, ["Be kind.", None, "absent"])))  # fmt: skip
    assert other.fingerprint != pool.fingerprint
    assert tokenise_pool(other, tok, max_length=256).fingerprint != t.fingerprint
    # no system text anywhere: the pool is the pool without the column
    empty = load_pool(write_jsonl(tmp_path / "e.jsonl", with_system(ALPACA, ["", None, "absent"])))
    assert empty.fingerprint == BEFORE["alpaca/alpaca"][0]


def test_a_system_that_is_not_text_is_an_invalid_example(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", with_system(ALPACA, ["ok", ["a", "list"], "absent"]))
    with pytest.raises(S2LError, match=r"s\.jsonl line 2 \(id=a2\): field 'system' is not text"):
        load_pool(path)


def test_a_chat_pool_system_column_is_its_first_turn(tmp_path):
    records = [{**CHAT[1], "system": "Be kind."}, {**CHAT[0], "system": "Be brief."}]
    pool = load_pool(write_jsonl(tmp_path / "c.jsonl", records))
    first = json.loads(pool.dataset["messages"][0])
    assert first == [{"role": "system", "content": "Be kind."}, CHAT[1]["messages"][0]]
    assert json.loads(pool.dataset["messages"][1]) == CHAT[0]["messages"][:2]
    assert pool.dataset["system"] == ["", ""]  # a chat's system prompt lives in its turns
    clash = [{**CHAT[0], "system": "Be long."}]
    with pytest.raises(S2LError, match="a system turn and a different 'system' value"):
        load_pool(write_jsonl(tmp_path / "x.jsonl", clash))


def test_a_pool_saved_before_the_system_column_loads(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", ALPACA))
    run = RunDir(tmp_path / "run")
    save_pool(pool, run)
    old = load_saved_pool(run).dataset.remove_columns("system")
    old.save_to_disk(str(tmp_path / "old"))
    import shutil

    shutil.rmtree(run.pool_dir)
    shutil.copytree(tmp_path / "old", run.pool_dir)
    again = load_saved_pool(run)
    assert again.dataset["system"] == ["", "", ""] and again.fingerprint == pool.fingerprint


def _selection(tmp_path, records) -> Path:
    sel = tmp_path / "run" / "selections" / "sel-s"
    sel.mkdir(parents=True)
    write_jsonl(sel / "subset.jsonl", records)
    (sel / "summary.json").write_text(json.dumps({"name": "sel-s", "subset_file": "subset.jsonl"}))
    return sel


def test_every_export_carries_the_system_prompt(tmp_path):
    records = with_system(ALPACA, ["Be terse.", None, "absent"])
    sel = _selection(tmp_path, records)

    rows = json.loads(export_selection(sel, "alpaca").files[0].read_text())
    assert [r["system"] for r in rows] == ["Be terse.", "", ""]
    assert all("original_system" not in r for r in rows)

    done = export_selection(sel, "llama-factory")
    entry = json.loads(done.files[1].read_text())["sel-s"]
    assert entry["columns"]["system"] == "system"
    rows = json.loads(done.files[0].read_text())
    assert [r[entry["columns"]["system"]] for r in rows] == ["Be terse.", "", ""]

    lines = [
        json.loads(x)
        for x in export_selection(sel, "messages").files[0].read_text().split("\n")
        if x
    ]
    assert lines[0]["messages"][0] == {"role": "system", "content": "Be terse."}
    assert [m["role"] for m in lines[1]["messages"]] == ["user", "assistant"]

    done = export_selection(sel, "axolotl")
    stanza = yaml.safe_load(done.files[1].read_text())["datasets"][0]
    assert stanza["type"] == "alpaca_w_system.load_instruct"
    lines = [json.loads(x) for x in done.files[0].read_text().splitlines()]
    # axolotl renders "{system}\n\n### Instruction:..." and nothing for an empty system: the
    # preamble S2L scored with is written out
    assert [x["system"] for x in lines] == [
        "Be terse.",
        ALPACA_PROMPT_WITH_INPUT.split("\n\n")[0],
        PREAMBLE,
    ]


def test_exports_without_a_system_column_have_no_system_field(tmp_path):
    sel = _selection(tmp_path, ALPACA)
    assert all(
        "system" not in r for r in json.loads(export_selection(sel, "alpaca").files[0].read_text())
    )
    entry = json.loads(export_selection(sel, "llama-factory").files[1].read_text())["sel-s"]
    assert "system" not in entry["columns"]
    stanza = yaml.safe_load(export_selection(sel, "axolotl").files[1].read_text())["datasets"][0]
    assert stanza["type"] == "alpaca"


# --------------------------------------------------------------------------------------------
# multi-turn chats: every assistant turn labelled
# --------------------------------------------------------------------------------------------


def labelled_text(tokenizer, example) -> list[str]:
    """The labelled stretches of one tokenised example, decoded, in order (from collate)."""
    from smalltolarge.formatting import collate

    batch = collate([example])
    labels = batch["labels"][0].tolist()
    runs, current = [], []
    for token in labels:
        if token == -100:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


@pytest.fixture
def multi_pool(tmp_path):
    return load_pool(write_jsonl(tmp_path / "multi.jsonl", MULTI))


def test_all_turns_alpaca_template(multi_pool, tok):
    last = tokenise_pool(multi_pool, tok, max_length=256, assistant_turns="last")
    every = tokenise_pool(multi_pool, tok, max_length=256)  # the default
    assert every.assistant_turns == "all" and every.n_multi_turn == 1 and every.labels_all_turns
    assert "label_spans" in every.dataset.column_names
    assert "label_spans" not in last.dataset.column_names
    assert every.fingerprint != last.fingerprint
    m1 = every.dataset[0]
    assert labelled_text(tok, m1) == ["Hello", "4</s>"]
    assert labelled_text(tok, last.dataset[0]) == ["4</s>"]
    # the prompt says the same, cut in pieces at the turn's edges
    assert tok.decode(m1["input_ids"][: m1["response_start"]]) == tok.decode(
        last.dataset[0]["input_ids"][: last.dataset[0]["response_start"]]
    )
    # a single-turn chat is tokenised as it always was
    assert every.dataset[1]["input_ids"] == last.dataset[1]["input_ids"]
    assert every.dataset[1]["label_spans"] == []
    assert list(every.response_lengths) == [
        len(tok("Hello")["input_ids"]) + len(m1["input_ids"]) - m1["response_start"],
        list(last.response_lengths)[1],
    ]


def test_all_turns_chat_template(multi_pool, tok):
    every = tokenise_pool(multi_pool, tok, template="chat", max_length=256)
    m1 = every.dataset[0]
    assert tok.decode(m1["input_ids"]) == (
        "<s><|user|>\nHi\n<|assistant|>\nHello\n<|user|>\n2+2?\n<|assistant|>\n4</s>"
    )
    # an earlier turn: its content and the template's end of turn, as trainers label it
    assert labelled_text(tok, m1) == ["Hello\n", "4</s>"]


def test_losses_count_every_labelled_token(multi_pool, tok):
    """The scoring kernel (TokenArrays batches), the training collator and the plain
    reference loss agree on the labels."""
    import numpy as np
    import torch

    from smalltolarge.formatting import TokenArrays, collate
    from smalltolarge.losses import reference_loss, score_model
    from tests.conftest import tiny_llama

    every = tokenise_pool(multi_pool, tok, template="chat", max_length=256)
    arrays = TokenArrays.from_dataset(every.dataset)
    batch = arrays.batch(np.arange(2))
    examples = [every.dataset[i] for i in range(2)]
    assert torch.equal(batch["labels"], collate(examples)["labels"])
    model = tiny_llama(tok).eval()
    scored = score_model(model, arrays)
    expected = [reference_loss(model, e) for e in examples]
    np.testing.assert_allclose(scored, expected, rtol=1e-5)
    last = tokenise_pool(multi_pool, tok, template="chat", max_length=256, assistant_turns="last")
    assert score_model(model, TokenArrays.from_dataset(last.dataset))[0] != pytest.approx(scored[0])


def test_a_template_that_rewrites_earlier_turns_is_refused(multi_pool, tok):
    from transformers import PreTrainedTokenizerFast

    odd = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
        pad_token=tok.pad_token,
    )
    # renders only the last two turns, as templates that drop earlier reasoning rewrite them
    odd.chat_template = (
        "{% for m in messages[-2:] %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    with pytest.raises(S2LError, match=r"id=m1: the chat template .* --assistant-turns last"):
        tokenise_pool(multi_pool, odd, template="chat", max_length=256)
    tokenise_pool(multi_pool, odd, template="chat", max_length=256, assistant_turns="last")


def test_assistant_turns_setting_is_checked():
    from smalltolarge.settings import PrepareSettings

    with pytest.raises(S2LError, match="unknown assistant_turns 'first'; choose one of all, last"):
        PrepareSettings(assistant_turns="first")


def test_prepare_records_and_reuses(tmp_path, capsys):
    from smalltolarge.prepare import prepare
    from smalltolarge.runs import read_json

    pool = write_jsonl(tmp_path / "multi.jsonl", MULTI * 1)
    run = RunDir(tmp_path / "run")
    prepare(pool, run, max_length=256)
    out = capsys.readouterr().out
    assert "1 multi-turn chats; the loss covers every assistant turn" in out
    meta = read_json(run.tokenised_meta)
    assert meta["assistant_turns"] == "all" and meta["n_multi_turn"] == 1
    assert meta["labels"] == "every assistant turn + eos"
    assert prepare(pool, run, max_length=256).reused
    again = prepare(pool, run, max_length=256, assistant_turns="last")
    assert not again.reused and "label_spans" not in again.tokenised.dataset.column_names
    assert read_json(run.tokenised_meta)["labels"] == "the response (last assistant turn) + eos"


def test_extension_rows_get_the_label_column_of_the_run():
    import datasets

    from smalltolarge.extend import _same_label_columns

    features = datasets.Features(
        {"id": datasets.Value("string"), "label_spans": datasets.List(datasets.Value("int32"))}
    )
    with_spans = datasets.Dataset.from_dict({"id": ["a"], "label_spans": [[1, 2]]}, features)
    without = datasets.Dataset.from_dict({"id": ["b"]})
    old, new = _same_label_columns(with_spans, without)
    assert datasets.concatenate_datasets([old, new])["label_spans"] == [[1, 2], []]
    old, new = _same_label_columns(without, with_spans)
    assert datasets.concatenate_datasets([old, new])["label_spans"] == [[], [1, 2]]


def test_finetune_learns_the_turns_the_run_scored(tmp_path):
    from smalltolarge.finetune import _scored_turns

    sel = _selection(tmp_path, MULTI)
    assert _scored_turns(sel) == "all"  # no run around it: S2L's default
    (tmp_path / "run" / "tokenised.json").write_text(json.dumps({"assistant_turns": "last"}))
    assert _scored_turns(sel) == "last"
    (tmp_path / "run" / "tokenised.json").write_text(json.dumps({"template": "alpaca"}))
    assert _scored_turns(sel) == "last"  # tokenised before the setting: the last turn
    assert _scored_turns(sel / "subset.jsonl") == "all"  # a file: as trainers learn
