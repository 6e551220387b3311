"""Tests for smalltolarge.generation: greedy batched generation with a tiny real model."""

from __future__ import annotations

import pytest
import torch

from smalltolarge.errors import S2LError
from smalltolarge.formatting import format_prompt
from smalltolarge.generation import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompts(demo_records) -> list[str]:
    # Different sources give prompts of clearly different token lengths, so batches pad.
    picked = demo_records[::45][:8]
    return [format_prompt(r["instruction"]) for r in picked]


def _force_tokens(model, schedule: list[int], fill: int):
    """Make the model emit ``schedule`` (one token per decoding step), then ``fill`` forever,
    by adding a large logit at the scheduled token; returns the hook handle."""
    step = {"n": 0}

    def hook(module, inputs, output):
        k = step["n"]
        step["n"] += 1
        boost = torch.zeros(output.shape[-1], dtype=output.dtype)
        boost[schedule[k] if k < len(schedule) else fill] = 1e4
        return output + boost

    return model.lm_head.register_forward_hook(hook)


def test_generate_is_deterministic(tiny_model, tokenizer, prompts):
    first = generate(tiny_model, tokenizer, prompts, max_new_tokens=10, batch_size=4)
    second = generate(tiny_model, tokenizer, prompts, max_new_tokens=10, batch_size=4)
    assert first == second
    assert len(first) == len(prompts)
    assert any(first)


def test_left_padded_batches_equal_one_prompt_at_a_time(tiny_model, tokenizer, prompts):
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # the batch really pads
    side = tokenizer.padding_side
    batched = generate(
        tiny_model, tokenizer, prompts, max_new_tokens=12, batch_size=8, precision="fp32"
    )
    alone = generate(
        tiny_model, tokenizer, prompts, max_new_tokens=12, batch_size=1, precision="fp32"
    )
    assert batched == alone
    assert any(batched)
    # and the outputs are in input order, not in the length order of the batches
    assert generate(tiny_model, tokenizer, [prompts[3]], max_new_tokens=12) == [batched[3]]
    assert tokenizer.padding_side == side


def test_generate_respects_max_new_tokens(tiny_model, tokenizer, prompts):
    a = tokenizer.convert_tokens_to_ids("a")
    handle = _force_tokens(tiny_model, [], fill=a)
    try:
        out = generate(tiny_model, tokenizer, prompts[:3], max_new_tokens=5, batch_size=2)
    finally:
        handle.remove()
    assert out == ["aaaaa"] * 3


def test_generate_stops_at_eos(tiny_model, tokenizer, prompts):
    a, b, z = (tokenizer.convert_tokens_to_ids(c) for c in "abz")
    handle = _force_tokens(tiny_model, [a, b, tokenizer.eos_token_id], fill=z)
    try:
        out = generate(tiny_model, tokenizer, prompts[:3], max_new_tokens=20, batch_size=3)
    finally:
        handle.remove()
    assert out == ["ab"] * 3


def test_generate_edge_cases(tiny_model, tokenizer):
    assert generate(tiny_model, tokenizer, [], max_new_tokens=4) == []
    with pytest.raises(S2LError, match="max_new_tokens"):
        generate(tiny_model, tokenizer, ["x"], max_new_tokens=0)
    with pytest.raises(S2LError, match="batch_size"):
        generate(tiny_model, tokenizer, ["x"], batch_size=0)
