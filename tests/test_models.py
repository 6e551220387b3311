"""Tests for smalltolarge.models: the pool-trained tokenizer, preset models, precision and
clear errors for models and tokenizers that cannot be had (no network here)."""

from __future__ import annotations

import os

import pytest
import torch

from smalltolarge.data import load_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import format_prompt
from smalltolarge.models import (
    PRESETS,
    SPECIAL_TOKENS,
    autocast_dtype,
    build_preset_model,
    check_tokenizer,
    count_parameters,
    cpu_has_fast_bf16,
    is_preset,
    load_causal_lm,
    load_tokenizer,
    resolve_precision,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

ROUND_TRIP = [
    "Hello, world!",
    "a , b . c ' d ?",
    "lion: 3 × 4 = 12",
    "It costs £5, or 6 €.",
    "naïve café — 日本語 🙂",
    "  two  spaces\n\ttab\r\n",
    "don't stop",
    "",
]


@pytest.fixture(scope="module")
def texts(pool_file):
    ds = load_pool(pool_file).dataset
    return [
        format_prompt(i, x) + r
        for i, x, r in zip(ds["instruction"], ds["input"], ds["response"], strict=True)
    ]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_bpe_tokenizer(texts, 2048)


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


def test_bpe_tokenizer_is_deterministic(texts, tokenizer):
    again = train_bpe_tokenizer(iter(texts), 2048)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tokenizer)
    other = train_bpe_tokenizer(texts[:60], 2048)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


def test_bpe_tokenizer_special_tokens(tokenizer):
    assert tokenizer.bos_token == SPECIAL_TOKENS["bos_token"] == "<s>"
    assert tokenizer.eos_token == SPECIAL_TOKENS["eos_token"] == "</s>"
    assert tokenizer.pad_token == SPECIAL_TOKENS["pad_token"] == "<pad>"
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert None not in ids and len(ids) == 3
    check_tokenizer(tokenizer, "tiny")
    # the vocabulary is the requested size (the pool has enough text) and len() covers it
    assert len(tokenizer) == len(tokenizer.get_vocab()) <= 2048
    assert len(tokenizer) > 1000
    # special tokens are single tokens, never split
    assert tokenizer("</s>", add_special_tokens=False)["input_ids"] == [tokenizer.eos_token_id]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_bpe_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # and nothing is added around the text by default either
    assert tokenizer(text)["input_ids"] == ids


def test_bpe_tokenizer_learned_the_pool(tokenizer, texts):
    """Merges were learned: the pool's text takes far fewer tokens than bytes."""
    sample = texts[0]
    assert len(tokenizer(sample)["input_ids"]) < len(sample.encode()) / 2


def test_tokenizer_without_eos_is_refused(tokenizer):
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(S2LError, match="'mine' has no end-of-sequence token"):
        check_tokenizer(tok, "mine")


def test_tokenizer_fingerprint_sees_the_chat_template(tokenizer):
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, **SPECIAL_TOKENS)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(tokenizer)


def test_saved_tokenizer_loads_identically(tmp_path, tokenizer):
    tokenizer.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)
    for text in ROUND_TRIP:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


# --------------------------------------------------------------------------------------------
# preset models
# --------------------------------------------------------------------------------------------


def test_presets():
    assert is_preset("tiny") and is_preset("small")
    assert not is_preset("EleutherAI/pythia-70m-deduped") and not is_preset("Tiny")


def test_tiny_preset_model(tokenizer):
    model = build_preset_model("tiny", tokenizer, seed=0)
    n = count_parameters(model)
    print(f"tiny preset: {n} parameters ({n / 1e6:.2f}M) for a vocabulary of {len(tokenizer)}")
    assert 5e5 <= n <= 1e6
    p = PRESETS["tiny"]
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        p.hidden_size,
        p.num_layers,
        p.num_heads,
    )
    assert cfg.intermediate_size == p.intermediate_size
    assert cfg.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), p.hidden_size)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    # tied embeddings: the head is the embedding matrix
    assert model.get_output_embeddings().weight.data_ptr() == (
        model.get_input_embeddings().weight.data_ptr()
    )
    assert next(model.parameters()).dtype == torch.float32


def test_preset_model_init_depends_only_on_the_seed(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = dict(build_preset_model("tiny", tokenizer, seed=0).named_parameters())
    # the global RNG is left alone
    assert torch.equal(torch.rand(3), expected_next)
    b = dict(build_preset_model("tiny", tokenizer, seed=0).named_parameters())
    c = dict(build_preset_model("tiny", tokenizer, seed=1).named_parameters())
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    random_init = [k for k in a if "norm" not in k]  # norms start at 1 whatever the seed
    assert random_init and not any(torch.equal(a[k], c[k]) for k in random_init)


def test_preset_model_runs(tokenizer):
    model = build_preset_model("tiny", tokenizer, seed=0)
    ids = torch.tensor([tokenizer("Add 2 and 2.")["input_ids"]])
    with torch.inference_mode():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)
    # untrained: about log(vocabulary) nats per token
    assert abs(float(out.loss) - torch.log(torch.tensor(float(len(tokenizer))))) < 1.0


# --------------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resolve_precision_explicit(precision):
    assert resolve_precision(precision) == precision
    assert resolve_precision(precision, "cpu") == precision


@pytest.mark.parametrize("bad", ["fp64", "BF16", "", "float32", "half"])
def test_resolve_precision_bad_value(bad):
    with pytest.raises(S2LError, match="precision must be auto, fp32, bf16 or fp16"):
        resolve_precision(bad)


def test_resolve_precision_auto_on_cpu():
    expected = "bf16" if cpu_has_fast_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert isinstance(cpu_has_fast_bf16(), bool)


def test_autocast_dtype():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16


# --------------------------------------------------------------------------------------------
# loading what cannot be had
# --------------------------------------------------------------------------------------------


MISSING = [
    "/nonexistent/model/dir",
    "s2l-tests/no-such-model",  # a hub name: no network here
]


@pytest.mark.parametrize("name", MISSING)
def test_load_causal_lm_missing(name):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(S2LError, match="could not load a causal LM from") as info:
        load_causal_lm(name)
    message = str(info.value)
    assert "\n" not in message and name in message


@pytest.mark.parametrize("name", MISSING)
def test_load_tokenizer_missing(name):
    with pytest.raises(S2LError, match="could not load a tokenizer from") as info:
        load_tokenizer(name)
    message = str(info.value)
    assert "\n" not in message and name in message


def test_load_from_a_directory_without_a_model(tmp_path, tokenizer):
    tokenizer.save_pretrained(str(tmp_path))  # a tokenizer, but no model
    with pytest.raises(S2LError, match="could not load a causal LM from") as info:
        load_causal_lm(tmp_path)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(S2LError, match="could not load a tokenizer from") as info:
        load_tokenizer(empty)
    assert "\n" not in str(info.value)


def test_load_causal_lm_dtype(tmp_path, tokenizer):
    build_preset_model("tiny", tokenizer, seed=0).save_pretrained(str(tmp_path))
    model = load_causal_lm(tmp_path)
    assert next(model.parameters()).dtype == torch.float32
    half = load_causal_lm(tmp_path, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
