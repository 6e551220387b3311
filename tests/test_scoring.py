"""Tests for smalltolarge.scoring: batched scores equal one-example-at-a-time scores, the
efficient and full-logits paths agree, bf16 is close to fp32, and scoring a run resumes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, length_batches, load_tokenised
from smalltolarge.models import load_causal_lm, load_tokenizer
from smalltolarge.proxy import list_checkpoints, read_proxy_meta
from smalltolarge.scoring import (
    _has_logit_postprocessing,
    plan_chunks,
    reference_loss,
    response_losses,
    score_model,
    score_trajectories,
)
from smalltolarge.trajectories import Trajectories

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
    assert not _has_logit_postprocessing(model)
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
            assert _has_logit_postprocessing(model)
            with HeadInputs(model) as head, torch.inference_mode():
                fallback, fallback_emb = response_losses(model, **batch, return_embeddings=True)
            assert [len(s) for s in head.shapes] == [3]  # (batch, length, hidden): full logits
        finally:
            del text_config.final_logit_softcapping
        assert not _has_logit_postprocessing(model)
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
        assert not _has_logit_postprocessing(llama)
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


# --------------------------------------------------------------------------------------------
# scoring a run
# --------------------------------------------------------------------------------------------


def test_score_trajectories_result(scored_run):
    traj = Trajectories.load(scored_run.trajectories_dir)
    tok_pool = load_tokenised(scored_run)
    proxy_meta = read_proxy_meta(scored_run)
    steps = [s for s, _ in list_checkpoints(scored_run.proxy_dir)]
    assert traj.losses.shape == (len(tok_pool), 4)
    assert traj.losses.dtype == np.float32
    assert np.isfinite(traj.losses).all() and (traj.losses > 0).all()
    assert traj.ids.tolist() == tok_pool.dataset["id"]
    assert traj.steps == steps == proxy_meta["checkpoint_steps"]
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    assert traj.meta["pool_fingerprint"] == tok_pool.pool_fingerprint
    assert traj.meta["tokenised_fingerprint"] == tok_pool.fingerprint
    assert traj.meta["proxy_fingerprint"] == proxy_meta["fingerprint"]
    assert traj.meta["precision"] == "fp32"
    means = traj.losses.mean(axis=0)
    assert means[-1] < means[0] - 0.5  # the proxy learned
    assert traj.embeddings is not None and traj.embeddings.shape == (len(tok_pool), 128)
    assert traj.embeddings.dtype == np.float32 and np.isfinite(traj.embeddings).all()
    assert not (scored_run.trajectories_dir / "parts").exists()


def test_score_trajectories_columns_are_score_model(scored_run):
    traj = Trajectories.load(scored_run.trajectories_dir)
    arrays = TokenArrays.from_dataset(load_tokenised(scored_run).dataset)
    pad = read_proxy_meta(scored_run)["pad_token_id"]
    for k in (0, 3):
        step, path = list_checkpoints(scored_run.proxy_dir)[k]
        column = score_model(load_causal_lm(path), arrays, pad_id=pad)
        assert np.array_equal(traj.losses[:, k], column), step


def test_embeddings_are_mean_pooled_last_hidden_states(scored_run, tok_pool):
    traj = Trajectories.load(scored_run.trajectories_dir)
    model = load_causal_lm(list_checkpoints(scored_run.proxy_dir)[-1][1]).eval()
    for i in (0, 7, len(tok_pool) - 1):
        ids = torch.tensor([tok_pool.dataset[i]["input_ids"]])
        with torch.inference_mode():
            hidden = model.model(input_ids=ids).last_hidden_state[0]
        assert np.allclose(traj.embeddings[i], hidden.mean(dim=0).numpy(), atol=TOL)


def test_recording_in_training_equals_scoring_the_checkpoints(run_copy):
    """The trajectories train_proxy records on the live model are those of the saved
    checkpoints, bit for bit."""
    recorded = Trajectories.load(run_copy.trajectories_dir, mmap=False)
    assert recorded.meta["recorded"] == "during training"
    scored = score_trajectories(run_copy, precision="fp32", force=True, progress=False)
    assert "recorded" not in scored.meta
    assert scored.fingerprint == recorded.fingerprint
    assert np.array_equal(np.asarray(scored.losses), recorded.losses)
    assert np.array_equal(np.asarray(scored.embeddings), recorded.embeddings)
    assert scored.ids.tolist() == recorded.ids.tolist() and scored.steps == recorded.steps


def test_rescoring_is_skipped(run_copy):
    out = run_copy.trajectories_dir
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    first = Trajectories.load(out, mmap=False)
    started = time.perf_counter()
    again = score_trajectories(run_copy, precision="fp32", progress=False)
    elapsed = time.perf_counter() - started
    assert np.array_equal(np.asarray(again.losses), first.losses)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert elapsed < 10, elapsed


def test_force_recomputes(run_copy):
    out = run_copy.trajectories_dir
    original = Trajectories.load(out, mmap=False).losses.copy()
    # tamper with the stored matrix: a skipped run hands it back, a forced one recomputes
    np.save(out / "losses.npy", np.full_like(original, 42.0))
    assert (score_trajectories(run_copy, precision="fp32", progress=False).losses == 42).all()
    forced = score_trajectories(run_copy, precision="fp32", force=True, progress=False)
    assert np.array_equal(np.asarray(forced.losses), original)
    assert np.array_equal(np.load(out / "losses.npy"), original)


CHUNK_TOKENS = 2000  # about 5 (checkpoint, chunk) units per checkpoint for this pool


def _interrupted(run) -> tuple[int, list[Path]]:
    """Start scoring ``run`` from scratch and let it die when it loads the second checkpoint
    (its weights are missing), as a killed run would; return the first step and its units."""
    shutil.rmtree(run.trajectories_dir, ignore_errors=True)
    (step0, _), (_, second) = list_checkpoints(run.proxy_dir)[:2]
    weights = second / "model.safetensors"
    hidden = weights.with_name("hidden.bin")
    weights.rename(hidden)
    try:
        with pytest.raises(S2LError, match="could not load a causal LM"):
            score_trajectories(run, precision="fp32", chunk_tokens=CHUNK_TOKENS, progress=False)
    finally:
        hidden.rename(weights)
    assert not (run.trajectories_dir / "meta.json").exists()
    units = sorted((run.trajectories_dir / "parts").rglob(f"*{step0:08d}*/*.npy"))
    return step0, units


def test_interrupted_scoring_resumes(run_copy, scored_run, tok_pool):
    reference = score_trajectories(
        run_copy, precision="fp32", chunk_tokens=CHUNK_TOKENS, force=True, progress=False
    )
    ref_losses = np.array(reference.losses)
    ref_embeddings = np.array(reference.embeddings)
    # chunking changes the batches, not the scores (beyond float rounding)
    whole = Trajectories.load(scored_run.trajectories_dir)
    assert np.abs(ref_losses - whole.losses).max() < TOL
    assert np.abs(ref_embeddings - whole.embeddings).max() < TOL
    chunks = plan_chunks(TokenArrays.from_dataset(tok_pool.dataset).lengths, CHUNK_TOKENS)
    assert len(chunks) >= 3

    # (i) the first checkpoint was scored before the crash, and the last of its units is lost
    # as if killed in the middle of it: the resumed run ends with the same matrix, bit for bit
    step0, units = _interrupted(run_copy)
    assert len(units) == len(chunks)
    units[-1].unlink()
    resumed = score_trajectories(
        run_copy, precision="fp32", chunk_tokens=CHUNK_TOKENS, progress=False
    )
    assert np.array_equal(np.asarray(resumed.losses), ref_losses)
    assert np.array_equal(np.asarray(resumed.embeddings), ref_embeddings)
    assert resumed.fingerprint == reference.fingerprint
    assert not (run_copy.trajectories_dir / "parts").exists()

    # (ii) the finished units are reused, not recomputed: a sentinel comes through, and only
    # in the rows of its chunk of the first column
    step0, units = _interrupted(run_copy)
    sentinel = np.full(len(chunks[1]), 123.25, dtype=np.float32)
    np.save(units[1], sentinel)
    resumed = np.asarray(
        score_trajectories(
            run_copy, precision="fp32", chunk_tokens=CHUNK_TOKENS, progress=False
        ).losses
    )
    expected = ref_losses.copy()
    expected[chunks[1], 0] = sentinel
    assert np.array_equal(resumed, expected)

    # (iii) units left by other inputs or settings are discarded, never mixed in
    step0, units = _interrupted(run_copy)
    np.save(units[1], sentinel)
    parts_json = run_copy.trajectories_dir / "parts" / "parts.json"
    parts_json.write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    resumed = score_trajectories(
        run_copy, precision="fp32", chunk_tokens=CHUNK_TOKENS, progress=False
    )
    assert np.array_equal(np.asarray(resumed.losses), ref_losses)


def test_plan_chunks():
    lengths = np.array([5, 50, 5, 20, 20, 1])
    chunks = plan_chunks(lengths, 30)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(6))
    assert np.concatenate(chunks).tolist() == [1, 3, 4, 0, 2, 5]  # longest first, stable
    assert [c.tolist() for c in plan_chunks(lengths, 10**6)] == [[1, 3, 4, 0, 2, 5]]
    with pytest.raises(S2LError, match="chunk_tokens must be positive"):
        plan_chunks(lengths, 0)


def test_scoring_needs_a_trained_proxy(run_copy):
    run_copy.proxy_meta.unlink()
    with pytest.raises(S2LError, match="proxy is not trained"):
        score_trajectories(run_copy, precision="fp32", force=True, progress=False)
