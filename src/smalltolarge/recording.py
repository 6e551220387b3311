"""Record loss trajectories in resumable (checkpoint, chunk) units, from saved checkpoints or
from a model while it trains.

The length-sorted pool is cut into chunks of about ``chunk_tokens`` tokens, independent of the
number of processes. Under ``accelerate launch`` process r takes chunks r, r + W, r + 2W, ...;
each finished unit is written atomically to ``trajectories/parts/`` (the losses file is the
completion marker), so a run killed at any point and restarted, with any number of processes,
recomputes only the unfinished units and ends with the same matrix, bit for bit. The main
process then merges the units into the trajectory artifact and removes the parts.

The same :class:`TrajectoryRecorder` serves saved checkpoints
(:func:`~smalltolarge.scoring.score_trajectories`) and a model while it trains
(:class:`TrajectoryCallback`, a ``transformers.TrainerCallback``), so trajectories can be
recorded without saving any checkpoint.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedModel, TrainerCallback

from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, TokenisedPool, load_tokenised
from smalltolarge.losses import score_batches
from smalltolarge.models import load_tokenizer, pad_token_id, resolve_precision
from smalltolarge.progress import bar
from smalltolarge.runs import (
    RunDir,
    atomic_save_npy,
    atomic_write_json,
    distributed_state,
    fingerprint,
    stage_is_current,
)
from smalltolarge.settings import DEFAULT_CHUNK_TOKENS, DEFAULT_MAX_TOKENS
from smalltolarge.trajectories import Trajectories


def trajectory_fingerprint(tokenised_fp: str, proxy_fp: str, precision: str) -> str:
    """The fingerprint of a trajectory matrix: what it was scored on, by what, how."""
    return fingerprint(tokenised_fp, proxy_fp, precision, "score-v2")


class TrajectoryRecorder:
    """Scores a run's tokenised pool at checkpoints in resumable (checkpoint, chunk) units.

    Every process of an ``accelerate launch`` builds one; each scores its own chunks.
    :meth:`record` scores one checkpoint's model, :meth:`finish` merges everything into
    ``trajectories/`` (on the main process) once all steps are recorded.
    """

    def __init__(
        self,
        run_dir: RunDir,
        tokenised: TokenisedPool,
        trajectory_fp: str,
        steps: Sequence[int],
        *,
        pad_id: int = 0,
        precision: str = "fp32",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        embeddings: bool = True,
        meta: dict[str, Any] | None = None,
        progress: bool = True,
        restart: bool = False,
    ):
        self.run_dir, self.tokenised, self.fingerprint = run_dir, tokenised, trajectory_fp
        self.steps = sorted(int(s) for s in steps)
        self.pad_id, self.precision, self.max_tokens = pad_id, precision, max_tokens
        self.embeddings, self.meta = embeddings, dict(meta or {})
        self.state = distributed_state()
        self.arrays = TokenArrays.from_dataset(tokenised.dataset)
        self.chunks = plan_chunks(self.arrays.lengths, chunk_tokens)
        self.mine = list(
            range(self.state.process_index, len(self.chunks), self.state.num_processes)
        )
        self.parts = run_dir.trajectory_parts_dir
        units_fp = fingerprint(trajectory_fp, chunk_tokens, self.steps, embeddings)
        if self.state.is_main_process:
            if self.parts.is_dir() and (
                restart or not stage_is_current(self.parts / "parts.json", units_fp)
            ):
                shutil.rmtree(self.parts)
            self.parts.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.parts / "parts.json", {"fingerprint": units_fp})
            # The artifact is being rewritten: until finish() it is not complete.
            run_dir.trajectories_meta.unlink(missing_ok=True)
        self.state.wait_for_everyone()
        total = len(self.steps) * len(self.mine)
        done = total - sum(len(self.pending(s)) for s in self.steps)
        show = progress and self.state.is_main_process
        if show and done:
            print(f"scoring: resuming, {done} of {total} units already scored and skipped")
        self.bar = bar(progress=show, total=total, initial=done, unit="unit", desc="scoring")
        self.started = time.perf_counter()

    def unit_path(self, step: int, chunk: int, kind: str = "losses") -> Path:
        suffix = "" if kind == "losses" else f".{kind}"
        return self.parts / f"step-{step:08d}" / f"chunk-{chunk:05d}{suffix}.npy"

    def pending(self, step: int) -> list[int]:
        """This process's chunks not yet scored at ``step``."""
        return [c for c in self.mine if not self.unit_path(step, c).is_file()]

    def record(self, step: int, model: PreTrainedModel) -> None:
        """Score this process's unfinished chunks at ``step`` with ``model`` (left in the
        train/eval mode it had)."""
        if step not in self.steps:
            raise ValueError(f"step {step} is not one of the recorded steps {self.steps}")
        want_embeddings = self.embeddings and step == self.steps[-1]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for chunk in self.pending(step):
                rows = self.chunks[chunk]
                self.bar.set_postfix_str(f"step {step}")
                losses = np.empty(len(rows), dtype=np.float32)
                pooled = None
                for pos, loss, emb in score_batches(
                    model,
                    self.arrays,
                    rows,
                    max_tokens=self.max_tokens,
                    precision=self.precision,
                    device=device,
                    pad_id=self.pad_id,
                    embeddings=want_embeddings,
                ):
                    losses[pos] = loss
                    if emb is not None:
                        if pooled is None:
                            pooled = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
                        pooled[pos] = emb
                if pooled is not None:
                    atomic_save_npy(self.unit_path(step, chunk, "emb"), pooled)
                atomic_save_npy(self.unit_path(step, chunk), losses)
                self.bar.update(1)
        finally:
            model.train(was_training)

    def finish(self) -> Trajectories:
        """Merge all units into ``trajectories/`` (main process) and return the artifact."""
        self.bar.close()
        self.state.wait_for_everyone()
        out = self.run_dir.trajectories_dir
        if self.state.is_main_process:
            missing = [
                (s, c)
                for s in self.steps
                for c in range(len(self.chunks))
                if not self.unit_path(s, c).is_file()
            ]
            if missing:
                raise S2LError(
                    f"scoring incomplete: {len(missing)} units missing "
                    f"(first: step {missing[0][0]}, chunk {missing[0][1]})"
                )
            n = len(self.arrays.response_start)
            losses = np.empty((n, len(self.steps)), dtype=np.float32)
            for t, step in enumerate(self.steps):
                for c, rows in enumerate(self.chunks):
                    losses[rows, t] = np.load(self.unit_path(step, c))
            emb = None
            if self.embeddings:
                parts = [
                    np.load(self.unit_path(self.steps[-1], c, "emb"))
                    for c in range(len(self.chunks))
                ]
                emb = np.empty((n, parts[0].shape[1]), dtype=np.float32)
                for rows, part in zip(self.chunks, parts, strict=True):
                    emb[rows] = part
            Trajectories(
                losses=losses,
                ids=np.asarray(self.tokenised.dataset["id"], dtype=object),
                steps=self.steps,
                embeddings=emb,
                meta={
                    "fingerprint": self.fingerprint,
                    "pool_fingerprint": self.tokenised.pool_fingerprint,
                    "tokenised_fingerprint": self.tokenised.fingerprint,
                    **self.meta,
                    "precision": self.precision,
                    "loss": "mean token NLL over every assistant turn's tokens + eos (nats)"
                    if self.tokenised.labels_all_turns
                    else "mean token NLL over response tokens + eos (nats)",
                    "embeddings": "mean-pooled last hidden state at the final checkpoint"
                    if self.embeddings
                    else None,
                    "processes": self.state.num_processes,
                    "seconds": round(time.perf_counter() - self.started, 2),
                },
            ).save(out)
            shutil.rmtree(self.parts)
        self.state.wait_for_everyone()
        return Trajectories.load(out)


class TrajectoryCallback(TrainerCallback):
    """Record loss trajectories while a model trains under a ``transformers.Trainer``.

    At each of the given global steps (or ``n_checkpoints`` evenly spaced ones), the pool of
    ``run_dir`` (prepared with ``s2l prepare`` for this model's tokenizer) is scored with the
    live model and the result written as ``run_dir/trajectories/``, the same artifact as
    ``s2l score``; no checkpoint needs to be saved. Under several processes, each scores its
    share. An interrupted and resumed training keeps the units it already recorded.

    Example::

        cb = TrajectoryCallback("runs/x", n_checkpoints=12)
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    """

    def __init__(
        self,
        run_dir: str | Path | RunDir,
        steps: Sequence[int] | None = None,
        *,
        n_checkpoints: int | None = None,
        precision: str = "auto",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        embeddings: bool = True,
        fingerprint: str | None = None,
        meta: dict[str, Any] | None = None,
        pad_id: int | None = None,
        progress: bool = True,
    ):
        if (steps is None) == (n_checkpoints is None):
            raise S2LError("give TrajectoryCallback either steps or n_checkpoints")
        self.run_dir = RunDir.of(run_dir)
        self.steps = None if steps is None else sorted(int(s) for s in steps)
        self.n_checkpoints = n_checkpoints
        self.precision, self.max_tokens, self.chunk_tokens = precision, max_tokens, chunk_tokens
        self.embeddings, self.fingerprint, self.meta = embeddings, fingerprint, meta
        self.pad_id, self.progress = pad_id, progress
        self.recorder: TrajectoryRecorder | None = None
        self.trajectories: Trajectories | None = None

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        # here, not at the top: `s2l score` loads this module and need not load the Trainer
        from smalltolarge.training import checkpoint_steps

        tokenised = load_tokenised(self.run_dir)
        steps = self.steps or checkpoint_steps(state.max_steps, self.n_checkpoints)
        device = next(model.parameters()).device
        precision = resolve_precision(self.precision, device)
        fp = self.fingerprint or fingerprint(
            tokenised.fingerprint,
            model.config.to_json_string(),
            args.learning_rate,
            args.num_train_epochs,
            args.max_steps,
            args.seed,
            steps,
            precision,
            "callback",
        )
        pad_id = self.pad_id
        if pad_id is None:
            pad_id = pad_token_id(load_tokenizer(self.run_dir.tokenizer_dir))
        self.recorder = TrajectoryRecorder(
            self.run_dir,
            tokenised,
            fp,
            steps,
            pad_id=int(pad_id),
            precision=precision,
            max_tokens=self.max_tokens,
            chunk_tokens=self.chunk_tokens,
            embeddings=self.embeddings,
            meta=self.meta,
            progress=self.progress,
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.recorder is not None and state.global_step in self.recorder.steps:
            self.recorder.record(state.global_step, model)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        recorder = self.recorder
        if recorder is not None and all(not recorder.pending(s) for s in recorder.steps):
            self.trajectories = recorder.finish()


def plan_chunks(lengths: np.ndarray, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[np.ndarray]:
    """Cut the examples, sorted by length (longest first, ties by index), into consecutive
    chunks of about ``chunk_tokens`` tokens. Depends only on the lengths, never on the number
    of processes, so units mean the same thing whoever computes them."""
    if chunk_tokens < 1:
        raise S2LError(f"chunk_tokens must be positive, not {chunk_tokens}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64)[order])
    cuts = (
        np.searchsorted(ends, np.arange(chunk_tokens, int(ends[-1]), chunk_tokens), side="right")
        if len(ends)
        else np.array([], dtype=np.int64)
    )
    return [c for c in np.split(order, np.unique(cuts)) if len(c)]
