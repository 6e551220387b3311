"""Tests for smalltolarge.scoring (the stage): the trajectories of a run, recorded in training
or scored from the checkpoints, skipping, forcing, and resuming an interrupted scoring."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, load_tokenised
from smalltolarge.losses import score_model
from smalltolarge.models import load_causal_lm
from smalltolarge.proxy import list_checkpoints, read_proxy_meta
from smalltolarge.recording import plan_chunks
from smalltolarge.scoring import score_trajectories
from smalltolarge.trajectories import Trajectories

TOL = 1e-5


@pytest.fixture(scope="module")
def tok_pool(trained_run):
    return load_tokenised(trained_run)


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
