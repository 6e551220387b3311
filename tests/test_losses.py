"""Tests for smalltolarge.losses (the loss kernel): batched scores equal one-example-at-a-time
scores, the efficient and full-logits paths agree, and bf16 is close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from smalltolarge.formatting import TokenArrays, length_batches, load_tokenised
from smalltolarge.losses import (
    has_logit_postprocessing,
    reference_loss,
    response_losses,
    score_model,
)
from smalltolarge.models import load_causal_lm, load_tokenizer
from smalltolarge.runs import list_checkpoints

TOL = 1e-5


@pytest.fixture(scope="module")
def tok_pool(trained_run):
    return load_tokenised(trained_run)


@pytest.fixture(scope="module")
def arrays(tok_pool):
    return TokenArrays.from_dataset(tok_pool.dataset)


@pytest.fixture(scope="module")
def tokenizer(trained_run):
    return load_tokenizer(trained_run.tokenizer_dir)


@pytest.fixture(scope="module")
def llama(trained_run):
    """The proxy's last checkpoint (a trained Llama-style model)."""
    return load_causal_lm(list_checkpoints(trained_run.proxy_dir)[-1][1]).eval()


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    """A small GPT-2 (base_model_prefix "transformer") with weights large enough that
    examples' losses differ by nats, so a misaligned position would show."""
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        n_positions=256,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    return model.eval()


def _reference(model, tok_pool) -> np.ndarray:
    return np.array([reference_loss(model, ex) for ex in tok_pool.dataset], dtype=np.float64)


class HeadInputs:
    """Records the shapes the output projection is called with (a forward hook)."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.get_output_embeddings().register_forward_hook(
            lambda mod, args, out: self.shapes.append(tuple(args[0].shape))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --------------------------------------------------------------------------------------------
# batched == one at a time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_batched_scores_equal_reference(request, which, tok_pool, arrays, tokenizer):
    model = request.getfixturevalue(which)
    assert model.base_model_prefix == {"llama": "model", "gpt2": "transformer"}[which]
    assert not has_logit_postprocessing(model)
    batches = length_batches(arrays.lengths, 512)
    # several examples per batch, of different lengths (so with padding)
    assert max(len(b) for b in batches) > 1
    assert any(len(set(arrays.lengths[b].tolist())) > 1 for b in batches)
    counted: list[int] = []
    with HeadInputs(model) as head:
        got = score_model(
            model, arrays, batches, pad_id=tokenizer.pad_token_id, on_batch=counted.append
        )
    # the efficient path: the head sees only the labelled positions, as a 2-D matrix
    assert head.shapes and all(len(s) == 2 for s in head.shapes)
    assert sum(s[0] for s in head.shapes) == int(tok_pool.response_lengths.sum())
    assert counted and sum(counted) == int(arrays.lengths.sum())
    assert got.dtype == np.float32 and got.shape == (len(tok_pool),)
    assert np.isfinite(got).all()
    ref = _reference(model, tok_pool)
    assert np.abs(got - ref).max() < TOL
    assert got.std() > 0.05  # the losses differ between examples: the comparison has power


def test_full_logits_fallback_equals_efficient_path(llama, gpt2, arrays, tokenizer):
    rows = length_batches(arrays.lengths, 1024)[1]
    batch = arrays.batch(rows, tokenizer.pad_token_id)
    for model in (llama, gpt2):
        with torch.inference_mode():
            efficient, emb = response_losses(model, **batch, return_embeddings=True)
            chunked = response_losses(model, **batch, max_logit_elements=7 * len(tokenizer))
        text_config = model.config
        text_config.final_logit_softcapping = 30.0  # not applied by Llama/GPT-2 themselves
        try:
            assert has_logit_postprocessing(model)
            with HeadInputs(model) as head, torch.inference_mode():
                fallback, fallback_emb = response_losses(model, **batch, return_embeddings=True)
            assert [len(s) for s in head.shapes] == [3]  # (batch, length, hidden): full logits
        finally:
            del text_config.final_logit_softcapping
        assert not has_logit_postprocessing(model)
        assert efficient.dtype == fallback.dtype == torch.float32
        assert efficient.shape == (len(rows),)
        assert torch.allclose(efficient, fallback, atol=TOL, rtol=0)
        assert torch.allclose(efficient, chunked, atol=TOL, rtol=0)
        assert emb.shape == fallback_emb.shape == (len(rows), model.config.hidden_size)
        assert torch.allclose(emb, fallback_emb, atol=TOL, rtol=0)


@pytest.mark.parametrize("value", [None, 1, 1.0])
def test_neutral_postprocessing_values_keep_the_efficient_path(llama, value):
    llama.config.logit_scale = value
    try:
        assert not has_logit_postprocessing(llama)
    finally:
        del llama.config.logit_scale


def test_batch_composition_does_not_matter(llama, arrays, tokenizer):
    pad = tokenizer.pad_token_id
    small = score_model(llama, arrays, max_tokens=64, pad_id=pad)  # mostly one per batch
    large = score_model(llama, arrays, max_tokens=4096, pad_id=pad)
    assert len(length_batches(arrays.lengths, 4096)) < len(length_batches(arrays.lengths, 64))
    assert np.abs(small - large).max() < TOL
    # and the padding value is irrelevant: padded positions are masked out
    other_pad = score_model(llama, arrays, max_tokens=4096, pad_id=tokenizer.eos_token_id)
    assert np.abs(other_pad - large).max() < TOL


def test_bf16_autocast_close_to_fp32(llama, arrays, tokenizer):
    fp32 = score_model(llama, arrays, pad_id=tokenizer.pad_token_id, precision="fp32")
    bf16 = score_model(llama, arrays, pad_id=tokenizer.pad_token_id, precision="bf16")
    assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
    diff = np.abs(bf16 - fp32)
    print(f"bf16 vs fp32: max abs diff {diff.max():.5f}, mean {diff.mean():.5f} nats")
    # measured on CPU with the tiny proxy: max 0.004-0.005, mean ~0.001 nats (losses 2-8 nats)
    assert diff.max() < 0.05
    assert diff.max() > 0  # autocast really ran in bf16
    # the ranking of examples, which is what the clustering sees, is almost unchanged
    assert np.corrcoef(fp32, bf16)[0, 1] > 0.999


def test_response_losses_needs_a_labelled_token(llama):
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    labels = torch.tensor([[-100, -100, 7, 8], [-100, -100, -100, -100]])
    with pytest.raises(ValueError, match="at least one labelled token"):
        response_losses(llama, ids, mask, labels)
    # a label on the first position only has nothing to predict it either
    labels = torch.tensor([[-100, -100, 7, 8], [5, -100, -100, -100]])
    with pytest.raises(ValueError, match="at least one labelled token"):
        response_losses(llama, ids, mask, labels)


def test_response_losses_is_the_mean_token_nll(llama):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 7, 8, 9]])
    with torch.inference_mode():
        got = response_losses(llama, ids, torch.ones_like(ids), labels)
        logp = torch.log_softmax(llama(input_ids=ids).logits[0].float(), dim=-1)
    want = -(logp[1, 7] + logp[2, 8] + logp[3, 9]) / 3
    assert abs(float(got[0]) - float(want)) < TOL
