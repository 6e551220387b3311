"""Tests for smalltolarge.formatting: templates, the response mask, over-length examples,
chat templates, length batching, collation and the saved tokenised pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smalltolarge.data import load_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import (
    ALPACA_PROMPT,
    TokenArrays,
    collate,
    format_prompt,
    length_batches,
    load_tokenised,
    save_tokenised,
    tokenise_pool,
)
from smalltolarge.models import train_bpe_tokenizer
from smalltolarge.runs import RunDir

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def pool(pool_file):
    return load_pool(pool_file)


@pytest.fixture(scope="module")
def tokenizer(pool):
    """A byte-level BPE trained on the pool, as prepare() does for the tiny preset."""
    ds = pool.dataset
    texts = [
        format_prompt(i, x) + r
        for i, x, r in zip(ds["instruction"], ds["input"], ds["response"], strict=True)
    ]
    return train_bpe_tokenizer(texts, 2048)


@pytest.fixture(scope="module")
def tokenised(pool, tokenizer):
    return tokenise_pool(pool, tokenizer, max_length=128)


@pytest.fixture
def chat_tokenizer(tokenizer):
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, **_specials(tokenizer))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _specials(tok) -> dict:
    return {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token}


# --------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------


def test_alpaca_template_without_input():
    assert format_prompt("Add 2 and 2.") == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd 2 and 2.\n\n### Response:\n"
    )
    assert format_prompt("Add 2 and 2.", "") == format_prompt("Add 2 and 2.")


def test_alpaca_template_with_input():
    assert format_prompt("Translate to English.", "bonjour") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate to English.\n\n### Input:\nbonjour\n\n### Response:\n"
    )


def test_alpaca_template_keeps_braces_in_text():
    # str.format is applied to the template, never to the user's text
    assert format_prompt("Print {x} and {}.") == ALPACA_PROMPT.replace(
        "{instruction}", "Print {x} and {}."
    )


def test_unknown_template_is_refused(pool, tokenizer):
    with pytest.raises(S2LError, match="unknown template 'vicuna'"):
        format_prompt("x", template="vicuna")
    with pytest.raises(S2LError, match="unknown template 'vicuna'"):
        tokenise_pool(pool, tokenizer, template="vicuna")


# --------------------------------------------------------------------------------------------
# the response mask
# --------------------------------------------------------------------------------------------


def test_labels_are_the_response_only(pool, tokenizer, tokenised):
    ds = tokenised.dataset
    arrays = TokenArrays.from_dataset(ds)
    rows = np.arange(len(ds))
    batch = arrays.batch(rows, pad_id=tokenizer.pad_token_id)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.dtype == labels.dtype == mask.dtype == torch.int64
    assert ids.shape == (len(ds), int(max(ds["length"])))
    responses = dict(zip(pool.ids, pool.dataset["response"], strict=True))
    n_untruncated = 0
    for r, ex in enumerate(ds):
        start, n = ex["response_start"], ex["length"]
        assert 0 < start < n <= 128
        assert ids[r, :n].tolist() == ex["input_ids"]
        assert (labels[r, :start] == -100).all()
        assert labels[r, start:n].tolist() == ex["input_ids"][start:]
        assert (labels[r, n:] == -100).all()
        assert (ids[r, n:] == tokenizer.pad_token_id).all()
        assert mask[r].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        response = responses[ex["id"]]
        response_ids = ex["input_ids"][start:]
        full = start + len(tokenizer(response, add_special_tokens=False)["input_ids"]) + 1
        if full <= 128:  # untruncated: the whole response, then eos, which carries loss
            n_untruncated += 1
            assert n == full
            assert int(labels[r, n - 1]) == tokenizer.eos_token_id
            assert tokenizer.decode(response_ids) == response + tokenizer.eos_token
            assert tokenizer.decode(response_ids[:-1]) == response
        else:  # cut at max_length: a prefix of the response, no eos
            assert n == 128
            assert tokenizer.eos_token_id not in response_ids
            assert response.startswith(tokenizer.decode(response_ids))
    assert n_untruncated == len(ds) - tokenised.n_truncated > 0


def test_prompt_tokens_are_the_formatted_prompt(pool, tokenizer, tokenised):
    prompts = {
        i: format_prompt(ins, inp)
        for i, ins, inp in zip(
            pool.ids, pool.dataset["instruction"], pool.dataset["input"], strict=True
        )
    }
    for ex in tokenised.dataset.select(range(10)):
        prompt_ids = ex["input_ids"][: ex["response_start"]]
        assert prompt_ids == tokenizer(prompts[ex["id"]])["input_ids"]
        assert tokenizer.decode(prompt_ids) == prompts[ex["id"]]


def test_prompt_and_response_are_tokenised_separately(tmp_path, tokenizer):
    # "### Response:\n" followed by a response starting with a newline and a word would merge
    # differently if the text were tokenised as a whole
    response = "\n\nThe answer is 34."
    records = [
        {"id": "a", "instruction": "How many legs?", "output": response},
        {
            "id": "b",
            "instruction": "A different, much longer prompt: count them.",
            "output": response,
        },
        {"id": "c", "instruction": "x", "input": "with an input", "output": response},
    ]
    tok_pool = tokenise_pool(
        load_pool(write_jsonl(tmp_path / "p.jsonl", records)), tokenizer, max_length=256
    )
    expected = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    starts = set()
    for ex in tok_pool.dataset:
        assert ex["input_ids"][ex["response_start"] :] == expected
        starts.add(ex["response_start"])
    assert len(starts) == 3  # the prompts differ in length, the labelled tokens do not
    # joint tokenisation really would have differed at the boundary for this text
    joint = tokenizer(format_prompt("How many legs?") + response)["input_ids"]
    assert joint != tok_pool.dataset[0]["input_ids"][:-1]


# --------------------------------------------------------------------------------------------
# over-length examples
# --------------------------------------------------------------------------------------------


def _prompt_len(tokenizer, instruction: str) -> int:
    return len(tokenizer(format_prompt(instruction))["input_ids"])


def test_pool_examples_with_long_prompts_are_excluded(pool, tokenizer, tokenised):
    ds = pool.dataset
    prompt_lens = {
        i: len(tokenizer(format_prompt(ins, inp))["input_ids"])
        for i, ins, inp in zip(pool.ids, ds["instruction"], ds["input"], strict=True)
    }
    too_long = sorted(i for i, n in prompt_lens.items() if n >= 128)
    assert 1 <= len(too_long) <= 10  # about 4 of the 120
    assert sorted(e["id"] for e in tokenised.excluded) == too_long
    for e in tokenised.excluded:
        assert e["reason"] == f"prompt has {prompt_lens[e['id']]} tokens, max_length is 128"
    assert len(tokenised) == len(pool) - len(too_long)
    assert not set(too_long) & set(tokenised.dataset["id"])
    # the scorable examples keep pool order and their pool index
    assert tokenised.dataset["pool_index"] == sorted(tokenised.dataset["pool_index"])
    for ex in tokenised.dataset.select(range(0, len(tokenised), 17)):
        assert pool.ids[ex["pool_index"]] == ex["id"]


def test_over_length_boundaries(tmp_path, tokenizer):
    fits = "Say hi."
    p = _prompt_len(tokenizer, fits)
    long_response = " ".join(str(k) for k in range(200))
    records = [
        {"id": "short", "instruction": fits, "output": "hi"},
        {"id": "cut", "instruction": fits, "output": long_response},
        {"id": "long-prompt", "instruction": "word " * 100, "output": "hi"},
    ]
    max_length = p + 8
    tok_pool = tokenise_pool(
        load_pool(write_jsonl(tmp_path / "p.jsonl", records)), tokenizer, max_length=max_length
    )
    assert tok_pool.dataset["id"] == ["short", "cut"]
    assert tok_pool.n_truncated == 1
    assert [e["id"] for e in tok_pool.excluded] == ["long-prompt"]
    n_long = _prompt_len(tokenizer, "word " * 100)
    assert tok_pool.excluded[0]["reason"] == (
        f"prompt has {n_long} tokens, max_length is {max_length}"
    )
    short, cut = tok_pool.dataset
    assert short["input_ids"][-1] == tokenizer.eos_token_id
    assert cut["length"] == len(cut["input_ids"]) == max_length
    assert cut["input_ids"][-1] != tokenizer.eos_token_id
    full = tokenizer(long_response, add_special_tokens=False)["input_ids"]
    assert cut["input_ids"][p:] == full[:8]
    assert tok_pool.response_lengths.tolist() == [short["length"] - p, 8]


def test_prompt_of_exactly_max_length_is_excluded_one_less_is_kept(tmp_path, tokenizer):
    records = [{"id": "x", "instruction": "Say hi.", "output": "hello there"}]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", records))
    p = _prompt_len(tokenizer, "Say hi.")
    with pytest.raises(S2LError, match=f"no example fits max_length={p}"):
        tokenise_pool(pool, tokenizer, max_length=p)
    kept = tokenise_pool(pool, tokenizer, max_length=p + 1)
    assert kept.n_truncated == 1 and not kept.excluded
    ex = kept.dataset[0]
    assert ex["length"] == p + 1 and ex["response_start"] == p  # a single labelled token
    assert kept.response_lengths.tolist() == [1]


def test_all_too_long_is_an_error(pool, tokenizer):
    with pytest.raises(S2LError, match=r"no example fits max_length=16: every prompt fills .*id="):
        tokenise_pool(pool, tokenizer, max_length=16)
    with pytest.raises(S2LError, match="max_length must be at least 2"):
        tokenise_pool(pool, tokenizer, max_length=1)


# --------------------------------------------------------------------------------------------
# chat template
# --------------------------------------------------------------------------------------------


def test_chat_template_renders_the_tokenizer_template(chat_tokenizer):
    text = format_prompt("Add 2 and 2.", template="chat", tokenizer=chat_tokenizer)
    assert text == "<s><|user|>\nAdd 2 and 2.\n<|assistant|>\n"
    text = format_prompt("Translate.", "bonjour", template="chat", tokenizer=chat_tokenizer)
    assert text == "<s><|user|>\nTranslate.\n\nbonjour\n<|assistant|>\n"
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = format_prompt(
        "ignored", messages=json.dumps(turns), template="chat", tokenizer=chat_tokenizer
    )
    assert text == "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_chat_template_tokenisation_uses_messages(tmp_path, chat_tokenizer):
    records = [
        {
            "id": "c1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Add 2 and 2."},
                {"role": "assistant", "content": "4"},
            ],
        },
        {
            "id": "c2",
            "messages": [
                {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "hi"},
            ],
        },
    ]
    pool = load_pool(write_jsonl(tmp_path / "chat.jsonl", records))
    assert pool.schema["kind"] == "messages"
    tok_pool = tokenise_pool(pool, chat_tokenizer, template="chat", max_length=256)
    tok = chat_tokenizer
    decoded = [
        (
            tok.decode(ex["input_ids"][: ex["response_start"]]),
            tok.decode(ex["input_ids"][ex["response_start"] :]),
        )
        for ex in tok_pool.dataset
    ]
    assert decoded == [
        ("<s><|system|>\nBe brief.\n<|user|>\nAdd 2 and 2.\n<|assistant|>\n", "4</s>"),
        ("<s><|user|>\nSay hi.\n<|assistant|>\n", "hi</s>"),
    ]
    # the rendered text carries the BOS token once: no second one added by the tokenizer
    assert tok_pool.dataset[0]["input_ids"].count(tok.bos_token_id) == 1
    assert tok_pool.template == "chat"


def test_chat_template_missing_is_an_error(pool, tokenizer):
    assert not getattr(tokenizer, "chat_template", None)
    with pytest.raises(S2LError, match="needs a tokenizer with a chat template"):
        format_prompt("x", template="chat", tokenizer=tokenizer)
    with pytest.raises(S2LError, match="needs a tokenizer with a chat template"):
        format_prompt("x", template="chat")
    with pytest.raises(S2LError, match="needs a tokenizer with a chat template"):
        tokenise_pool(pool, tokenizer, template="chat")


def test_tokenizer_without_eos_is_refused(pool, tokenizer):
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>")
    assert tok.eos_token_id is None
    with pytest.raises(S2LError, match="no end-of-sequence token"):
        tokenise_pool(pool, tok)


# --------------------------------------------------------------------------------------------
# length batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [1, 50, 256, 1000, 100_000])
def test_length_batches_cover_every_index_within_budget(max_tokens):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=257)
    lengths[10:20] = 42  # ties
    batches = length_batches(lengths, max_tokens)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(b.dtype.kind == "i" and len(b) >= 1 for b in batches)
    for b in batches:
        if len(b) > 1:
            assert len(b) * lengths[b].max() <= max_tokens
    # longest first, ties in index order
    assert flat.tolist() == np.argsort(-lengths, kind="stable").tolist()
    again = length_batches(list(lengths), max_tokens)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]


def test_length_batches_long_examples_get_their_own_batch():
    lengths = [5, 500, 5, 5, 300, 5]
    batches = length_batches(lengths, 100)
    assert [b.tolist() for b in batches] == [[1], [4], [0, 2, 3, 5]]


def test_length_batches_fill_the_budget():
    lengths = [10] * 25
    assert [len(b) for b in length_batches(lengths, 100)] == [10, 10, 5]
    assert [len(b) for b in length_batches(lengths, 109)] == [10, 10, 5]
    assert [len(b) for b in length_batches(lengths, 110)] == [11, 11, 3]


def test_length_batches_max_batch_size():
    lengths = np.full(23, 4)
    batches = length_batches(lengths, 10_000, max_batch_size=5)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(23))
    assert [len(b) for b in length_batches(lengths, 8, max_batch_size=5)] == [2] * 11 + [1]


def test_length_batches_errors_and_empty():
    with pytest.raises(S2LError, match="max_tokens must be positive"):
        length_batches([1, 2], 0)
    with pytest.raises(S2LError, match="max_tokens must be positive"):
        length_batches([1, 2], -5)
    assert length_batches([], 10) == []


# --------------------------------------------------------------------------------------------
# TokenArrays and collate
# --------------------------------------------------------------------------------------------


def test_token_arrays_match_the_dataset_rows(tokenised):
    ds = tokenised.dataset
    arrays = TokenArrays.from_dataset(ds)
    assert arrays.values.dtype == np.int32
    assert arrays.offsets[0] == 0 and len(arrays.offsets) == len(ds) + 1
    assert arrays.lengths.tolist() == ds["length"]
    assert arrays.response_start.tolist() == ds["response_start"]
    for i in range(len(ds)):
        got = arrays.values[arrays.offsets[i] : arrays.offsets[i + 1]]
        assert got.tolist() == ds[i]["input_ids"]


@pytest.mark.parametrize("subset", ["slice", "select"])
def test_token_arrays_of_a_subset(tokenised, subset):
    ds = tokenised.dataset
    rows = list(range(30, 60)) if subset == "slice" else [50, 3, 77, 3, 10]
    sub = ds.select(rows)
    arrays = TokenArrays.from_dataset(sub)
    assert arrays.lengths.tolist() == sub["length"]
    for k in range(len(sub)):
        b = arrays.batch(np.array([k]))
        assert b["input_ids"][0].tolist() == ds[rows[k]]["input_ids"]
        assert arrays.response_start[k] == ds[rows[k]]["response_start"]


def test_token_arrays_batch_equals_collate(tokenised, tokenizer):
    ds = tokenised.dataset
    arrays = TokenArrays.from_dataset(ds)
    pad = tokenizer.pad_token_id
    batches = length_batches(arrays.lengths, 512)
    assert any(len(set(arrays.lengths[b].tolist())) > 1 for b in batches)  # real padding
    extra = [np.array([5, 0, 99, 1]), np.arange(len(ds))]
    for rows in [*batches, *extra]:
        got = arrays.batch(rows, pad_id=pad)
        want = collate([ds[int(i)] for i in rows], pad_id=pad)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype == torch.int64
            assert torch.equal(got[key], want[key]), key


def test_collate_pads_to_multiple():
    examples = [
        {"input_ids": [1, 2, 3, 4, 5], "response_start": 3},
        {"input_ids": [6, 7], "response_start": 1},
    ]
    out = collate(examples, pad_id=9, pad_to_multiple_of=4)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 9, 9], [6, 7, 9, 9, 9, 9, 9, 9]]
    assert out["labels"].tolist() == [
        [-100, -100, -100, 4, 5, -100, -100, -100],
        [-100, 7, -100, -100, -100, -100, -100, -100],
    ]
    assert out["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 2 + [0] * 6]


# --------------------------------------------------------------------------------------------
# saved tokenised pool and fingerprints
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, tokenised):
    run = RunDir(tmp_path / "run")
    save_tokenised(tokenised, run)
    meta = json.loads(run.tokenised_meta.read_text())
    assert meta["fingerprint"] == tokenised.fingerprint
    assert meta["n_scorable"] == len(tokenised)
    assert meta["n_excluded"] == len(tokenised.excluded)
    loaded = load_tokenised(run)
    assert loaded.fingerprint == tokenised.fingerprint
    for name in (
        "template",
        "max_length",
        "pool_fingerprint",
        "tokenizer_fingerprint",
        "excluded",
        "n_truncated",
    ):
        assert getattr(loaded, name) == getattr(tokenised, name), name
    assert loaded.dataset.column_names == list(
        ("id", "pool_index", "input_ids", "response_start", "length")
    )
    assert loaded.dataset.to_dict() == tokenised.dataset.to_dict()
    assert np.array_equal(loaded.lengths, tokenised.lengths)
    # saving again replaces the previous one
    save_tokenised(tokenised, run)
    assert load_tokenised(run).dataset.to_dict() == tokenised.dataset.to_dict()


def test_load_tokenised_missing(tmp_path):
    with pytest.raises(S2LError, match="no tokenised pool"):
        load_tokenised(RunDir(tmp_path / "nothing"))


def test_fingerprint_changes_with_settings(pool, tokenizer, tokenised, chat_tokenizer):
    fps = {tokenised.fingerprint}
    assert tokenise_pool(pool, tokenizer, max_length=128).fingerprint == tokenised.fingerprint
    fps.add(tokenise_pool(pool, tokenizer, max_length=129).fingerprint)
    # a different tokenizer: the chat template alone changes it, and another vocabulary too
    fps.add(tokenise_pool(pool, chat_tokenizer, max_length=128).fingerprint)
    fps.add(tokenise_pool(pool, chat_tokenizer, template="chat", max_length=128).fingerprint)
    other = train_bpe_tokenizer(pool.dataset["response"], 600)
    fps.add(tokenise_pool(pool, other, max_length=128).fingerprint)
    assert len(fps) == 5
