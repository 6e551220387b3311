"""Every stage's settings: one default and one check each, refused with a message that names
the setting."""

from __future__ import annotations

import dataclasses

import pytest

from smalltolarge.errors import S2LError
from smalltolarge.settings import (
    DEFAULT_MAX_LENGTH,
    STAGES,
    EvalSettings,
    FinetuneSettings,
    PrepareSettings,
    ProxySettings,
    ScoreSettings,
    SelectSettings,
    budget_label,
    budget_value,
    parse_budget,
)


def test_defaults_build_and_are_frozen():
    for cls in STAGES.values():
        settings = cls()
        assert settings.as_dict() == cls.defaults()
        field = cls.names()[0]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, field, None)
    # max_length has one default, shared by every stage that has one
    assert PrepareSettings().max_length == FinetuneSettings().max_length == DEFAULT_MAX_LENGTH
    assert EvalSettings().max_length == DEFAULT_MAX_LENGTH
    # an interval given wins over the default number of checkpoints
    assert ProxySettings(checkpoint_every=50).n_checkpoints is None


@pytest.mark.parametrize(
    "cls, changes, message",
    [
        (PrepareSettings, dict(template="vicuna"), "unknown template 'vicuna'"),
        (PrepareSettings, dict(max_length=1), "max_length must be at least 2"),
        (PrepareSettings, dict(max_length=0), "max_length must be a positive integer"),
        (PrepareSettings, dict(on_invalid="ignore"), "unknown on_invalid"),
        (PrepareSettings, dict(proxy=""), "proxy must be a non-empty name"),
        (ProxySettings, dict(learning_rate=0), "learning_rate must be positive, not 0"),
        (ProxySettings, dict(batch_size=0), "batch_size must be a positive integer"),
        (ProxySettings, dict(epochs=0.0), "epochs must be positive, not 0.0"),
        (ProxySettings, dict(n_checkpoints=0), "checkpoints must be a positive integer"),
        (ProxySettings, dict(n_checkpoints=None), "give the number of checkpoints"),
        (ProxySettings, dict(warmup_ratio=1.0), r"warmup_ratio must be in \[0.0, 1.0\)"),
        (ProxySettings, dict(precision="fp8"), "precision must be auto, fp32, bf16 or fp16"),
        (ProxySettings, dict(seed=-1), "seed must be an integer >= 0"),
        (ProxySettings, dict(batch_size=True), "batch_size must be a positive integer"),
        (ScoreSettings, dict(max_tokens=0), "max_tokens must be a positive integer"),
        (SelectSettings, dict(budget="lots"), "budget 'lots' is not a number"),
        (SelectSettings, dict(n_clusters=0), "n_clusters must be a positive integer"),
        (FinetuneSettings, dict(learning_rate=None), "learning_rate must be positive"),
        (FinetuneSettings, dict(lora_dropout=1.5), "lora_dropout must be in"),
        (FinetuneSettings, dict(lora_target_modules="q_proj"), "list of module names"),
        (EvalSettings, dict(metric="bleu"), "unknown metric 'bleu'"),
        (EvalSettings, dict(max_examples=0), "max_examples must be a positive integer"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(cls, changes, message):
    with pytest.raises(S2LError, match=message):
        cls(**changes)
    with pytest.raises(S2LError, match=message):  # replace() checks again
        cls().replace(**changes)


def test_from_mapping_refuses_unknown_keys_and_fills_defaults():
    s = ProxySettings.from_mapping({"epochs": 1, "seed": 3}, "proxy")
    assert (s.epochs, s.seed, s.n_checkpoints) == (1, 3, 12)
    assert ProxySettings.from_mapping(None, "proxy") == ProxySettings()
    with pytest.raises(S2LError, match=r"unknown key in proxy: epoch \(known: .*epochs"):
        ProxySettings.from_mapping({"epoch": 1}, "proxy")
    with pytest.raises(S2LError, match="proxy must be a mapping"):
        ProxySettings.from_mapping([1], "proxy")  # type: ignore[arg-type]
    s = FinetuneSettings.from_mapping({"lora_target_modules": ["q_proj", "v_proj"]}, "target")
    assert s.lora_target_modules == ("q_proj", "v_proj")  # hashable, like the rest


@pytest.mark.parametrize(
    "budget, parsed, label",
    [
        (0.3, (0.3, None), "0.3"),
        ("0.30", (0.3, None), "0.3"),
        ("30%", (0.3, None), "0.3"),
        (300, (None, 300), "300"),
        ("300", (None, 300), "300"),
        ("1e-1", (0.1, None), "0.1"),
    ],
)
def test_one_parser_and_one_spelling_per_budget(budget, parsed, label):
    assert parse_budget(budget) == parsed
    assert budget_label(budget) == label
    assert budget_value(budget) == (parsed[0] if parsed[0] is not None else parsed[1])


@pytest.mark.parametrize("budget", [True, float("nan"), "a lot", None, [0.3]])
def test_what_is_not_a_budget_is_refused(budget):
    with pytest.raises(S2LError, match="budget"):
        parse_budget(budget, "the pool has 10 examples")
