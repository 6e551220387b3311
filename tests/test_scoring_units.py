"""Scoring in (checkpoint, chunk) units: several processes, SIGKILL and resume, in training.

These run the real command line in subprocesses (two processes over gloo through
``accelerate launch``; a run killed with SIGKILL part-way), so they take tens of seconds; to
keep them short they score the run at two of its checkpoints (the first and the last), which
is all that units across checkpoints need.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import Trainer, TrainingArguments

from smalltolarge.formatting import TokenArrays, collate, load_tokenised
from smalltolarge.losses import score_batches
from smalltolarge.models import build_preset_model, load_tokenizer
from smalltolarge.recording import TrajectoryCallback, plan_chunks
from smalltolarge.runs import RunDir, atomic_write_json, list_checkpoints, read_json
from smalltolarge.scoring import score_trajectories

CHUNK = "600"  # tokens per unit: 15 units per checkpoint on the test pool


def score_args(run: RunDir, *extra: str, processes: int = 1) -> list[str]:
    """The `s2l score` command line of these tests (fp32, small units), under `accelerate
    launch` with several processes."""
    launcher = [sys.executable, "-m", "smalltolarge.cli"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(_free_port()),
            "-m",
            "smalltolarge.cli",
        ]
    return [
        *launcher,
        "score",
        "--run-dir",
        str(run.root),
        "--precision",
        "fp32",
        "--chunk-tokens",
        CHUNK,
        *extra,
    ]


def _free_port() -> int:
    """A TCP port nobody listens on now, so parallel runs of the suite do not collide."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ok(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_plan_chunks_covers_every_example_once_longest_first():
    lengths = np.array([5, 50, 20, 20, 1, 80, 7])
    chunks = plan_chunks(lengths, chunk_tokens=60)
    flat = np.concatenate(chunks)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert flat.tolist() == [5, 1, 2, 3, 6, 0, 4]  # longest first, ties by index
    assert all(lengths[c].sum() < 60 + lengths[c].max() for c in chunks)
    assert [c.tolist() for c in plan_chunks(lengths, 60)] == [c.tolist() for c in chunks]


def score_in_process(
    run: RunDir, max_tokens: int | None = None, *, force: bool = True, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A single-process scoring run in this process, with one torch thread like the launched
    ones (the thread count changes the order of floating-point sums, so it is held fixed);
    in-process, it saves the start-up of a Python with torch and transformers (about ten
    seconds, most of these tests' time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extra = {} if max_tokens is None else {"max_tokens": max_tokens}
        score_trajectories(
            run, precision="fp32", chunk_tokens=int(CHUNK), force=force, progress=progress, **extra
        )
    finally:
        torch.set_num_threads(threads)
    return (
        np.load(run.trajectories_dir / "losses.npy"),
        np.load(run.trajectories_dir / "embeddings.npy"),
    )


def first_and_last_checkpoint(run: RunDir) -> RunDir:
    """``run`` with the proxy checkpoints between the first and the last removed, and
    ``proxy.json`` recording the two left (scoring scores exactly the ones it records)."""
    for _, path in list_checkpoints(run.proxy_dir)[1:-1]:
        shutil.rmtree(path)
    kept = list_checkpoints(run.proxy_dir)
    assert len(kept) == 2
    meta = read_json(run.proxy_meta)
    atomic_write_json(run.proxy_meta, {**meta, "checkpoint_steps": [s for s, _ in kept]})
    return run


def plan_chunks_of(run: RunDir) -> list[np.ndarray]:
    return plan_chunks(TokenArrays.from_dataset(load_tokenised(run).dataset).lengths, int(CHUNK))


def test_two_processes_give_the_single_process_matrix(run_copy, tmp_path):
    first_and_last_checkpoint(run_copy)
    expected, expected_emb = score_in_process(run_copy)
    assert expected.shape[1] == 2 and len(plan_chunks_of(run_copy)) > 4
    run_ok(score_args(run_copy, "--force", processes=2))
    meta = json.loads((run_copy.trajectories_dir / "meta.json").read_text())
    assert meta["processes"] == 2
    merged = np.load(run_copy.trajectories_dir / "losses.npy")
    assert np.array_equal(merged, expected)
    assert np.array_equal(np.load(run_copy.trajectories_dir / "embeddings.npy"), expected_emb)


def test_sigkill_then_resume_recomputes_only_unfinished_units(run_copy, capsys):
    first_and_last_checkpoint(run_copy)
    expected, _ = score_in_process(run_copy, max_tokens=64)
    parts = run_copy.trajectories_dir / "parts"
    args = score_args(run_copy, "--max-tokens", "64", "--force")
    victim = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    done: list[Path] = []
    while time.monotonic() < deadline and victim.poll() is None:
        done = list(parts.glob("step-*/chunk-*[0-9].npy")) if parts.is_dir() else []
        if len(done) >= 6:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "scoring finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    finished = sorted(parts.glob("step-*/chunk-*[0-9].npy"))
    assert len(finished) >= 6
    assert not (run_copy.trajectories_dir / "meta.json").exists()

    # resumed in this process: what is proven is that the killed run's units are reused
    capsys.readouterr()
    losses, _ = score_in_process(run_copy, max_tokens=64, force=False, progress=True)
    resumed = capsys.readouterr()
    assert f"{len(finished)} of" in resumed.out + resumed.err
    assert "already scored and skipped" in resumed.out + resumed.err
    assert np.array_equal(losses, expected)


def test_callback_records_trajectories_under_a_users_trainer(trained_run, tmp_path):
    run = RunDir(tmp_path / "user")
    for part in ("pool", "pool.json", "tokenizer", "tokenised", "tokenised.json"):
        src = trained_run.root / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run.root / part)
    tokenised = load_tokenised(run)
    tokenizer = load_tokenizer(run.tokenizer_dir)
    model = build_preset_model("tiny", tokenizer, seed=1)
    callback = TrajectoryCallback(
        run, n_checkpoints=3, precision="fp32", chunk_tokens=500, progress=False
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=True,
        seed=1,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenised.dataset,
        data_collator=lambda ex: collate(ex, tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.train()
    traj = callback.trajectories
    assert traj is not None
    total = trainer.state.global_step
    assert traj.steps[-1] == total and len(traj.steps) == 3
    assert traj.losses.shape == (len(tokenised), 3)
    assert np.isfinite(traj.losses).all()
    assert traj.losses[:, -1].mean() < traj.losses[:, 0].mean()
    assert (run.trajectories_dir / "meta.json").is_file()
    # the last column is the trained model's own loss, computed the same way
    arrays = TokenArrays.from_dataset(tokenised.dataset)
    expected = np.empty(len(tokenised), dtype=np.float32)
    for rows in plan_chunks(arrays.lengths, 500):
        for pos, loss, _ in score_batches(
            model,
            arrays,
            rows,
            max_tokens=16384,
            precision="fp32",
            device="cpu",
            pad_id=tokenizer.pad_token_id,
        ):
            expected[rows[pos]] = loss
    np.testing.assert_array_equal(traj.losses[:, -1], expected)
    assert traj.embeddings is not None and traj.embeddings.shape[0] == len(tokenised)


@pytest.mark.parametrize("record", [True, False])
def test_proxy_training_records_or_leaves_scoring_to_score(trained_run, tmp_path, record):
    """Our own proxy training goes through the same callback: with recording on, `s2l score`
    finds the trajectories current; the two paths give the same matrix."""
    from smalltolarge.proxy import train_proxy

    run = RunDir(tmp_path / "r")
    shutil.copytree(trained_run.root, run.root)
    shutil.rmtree(run.trajectories_dir, ignore_errors=True)
    train_proxy(
        run,
        epochs=1,
        batch_size=8,
        n_checkpoints=2,
        precision="fp32",
        record=record,
        progress=False,
    )
    assert (run.trajectories_dir / "meta.json").is_file() == record
    scored = score_trajectories(run, precision="fp32", progress=False)
    again = score_trajectories(run, precision="fp32", force=True, progress=False)
    np.testing.assert_allclose(scored.losses, again.losses, atol=1e-5)


def test_length_batches_keep_padding_under_the_cap_where_lengths_are_sparse():
    from smalltolarge.formatting import length_batches

    lengths = np.random.default_rng(0).integers(5, 400, size=300)
    for cap in (0.1, 0.25):
        batches = length_batches(lengths, 4096, max_padding=cap)
        assert sorted(np.concatenate(batches).tolist()) == list(range(300))
        for b in batches:
            computed = len(b) * lengths[b].max()
            assert (computed - lengths[b].sum()) / computed <= cap
            assert computed <= 4096 or len(b) == 1
    uncapped = length_batches(lengths, 4096, max_padding=None)
    assert len(uncapped) < len(length_batches(lengths, 4096, max_padding=0.1))
