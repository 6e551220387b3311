"""Score loss trajectories: every example's mean response-token loss at every checkpoint.

The cost S2L users pay is T checkpoints x N examples of forward passes, so the scorer
- batches examples of similar length under a token budget (:func:`length_batches`), with
  right padding masked out of attention and loss;
- runs the backbone only, then the output projection and cross-entropy only at response
  positions, never a full (batch x length x vocabulary) logits tensor;
- runs under ``torch.inference_mode`` and, optionally, bf16/fp16 autocast.

Work is done in units of (checkpoint, chunk): the length-sorted pool is cut into chunks of
about ``chunk_tokens`` tokens, independent of the number of processes. Under
``accelerate launch`` process r takes chunks r, r + W, r + 2W, ...; each finished unit is written
atomically to ``trajectories/parts/`` (the losses file is the completion marker), so a run
killed at any point and restarted, with any number of processes, recomputes only the
unfinished units and ends with the same matrix, bit for bit. The main process then merges the
units into the trajectory artifact and removes the parts.

The same :class:`TrajectoryRecorder` serves saved checkpoints (:func:`score_trajectories`) and
a model while it trains (:class:`TrajectoryCallback`, a ``transformers.TrainerCallback``), so
trajectories can be recorded without saving any checkpoint.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, TrainerCallback

from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, TokenisedPool, length_batches, load_tokenised
from smalltolarge.models import autocast_dtype, default_device, load_causal_lm, resolve_precision
from smalltolarge.presets import apply_preset
from smalltolarge.progress import bar, quiet_libraries_unless_progress
from smalltolarge.runs import (
    RunDir,
    atomic_save_npy,
    atomic_write_json,
    distributed_state,
    fingerprint,
    list_checkpoints,
    read_json,
    read_proxy_meta,
    stage_is_current,
)
from smalltolarge.trajectories import Trajectories

#: Scoring batch size in tokens: small batches of similar length kept the CPU's caches warm
#: (benchmarks/scoring.py measured 4096 faster than 16384 on 2 cores); GPUs want more.
DEFAULT_MAX_TOKENS = 4096
DEFAULT_CHUNK_TOKENS = 1 << 20

# Configurations whose logits are more than lm_head(hidden): these get the plain forward pass.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@quiet_libraries_unless_progress
def score_trajectories(
    run_dir: str | Path | RunDir,
    *,
    precision: str = "auto",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    device: str | None = None,
    embeddings: bool = True,
    force: bool = False,
    preset: str | None = None,
    progress: bool = True,
) -> Trajectories:
    """Score every scorable example of ``run_dir`` at every saved proxy checkpoint.

    Reads ``tokenised/`` and ``proxy/step-*``; writes ``trajectories/`` (see
    :mod:`smalltolarge.trajectories`), including ``embeddings.npy`` (the mean-pooled last
    hidden state at the final checkpoint, for embedding-based baselines) unless
    ``embeddings=False``. Resumable and multi-process, see the module docstring. Skipped when
    ``trajectories/`` already holds the result for the same inputs, unless ``force``.
    ``preset="reference"`` scores in fp32, as the reference code does.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    precision = apply_preset(preset, score_precision=(precision, "auto"))["score_precision"]
    tok_pool = load_tokenised(run_dir)
    proxy_meta = read_proxy_meta(run_dir)
    _check_proxy_matches(run_dir, proxy_meta, tok_pool.fingerprint)
    device = device or default_device()
    precision = resolve_precision(precision, device)
    fp = trajectory_fingerprint(tok_pool.fingerprint, proxy_meta["fingerprint"], precision)
    out = run_dir.trajectories_dir
    if not force and stage_is_current(out / "meta.json", fp):
        traj = Trajectories.load(out)
        if progress:
            how = "recorded during proxy training" if traj.meta.get("recorded") else "up to date"
            print(f"scoring: {out} {how}, skipped")
        return traj
    if not proxy_meta.get("save_checkpoints", True):
        raise S2LError(
            f"{run_dir.root}: the proxy was trained without saving checkpoints (its trajectories "
            "were recorded during training); re-train with --save-checkpoints to re-score"
        )
    checkpoints = list_checkpoints(run_dir.proxy_dir)
    recorder = TrajectoryRecorder(
        run_dir,
        tok_pool,
        fp,
        [s for s, _ in checkpoints],
        pad_id=int(proxy_meta.get("pad_token_id") or 0),
        precision=precision,
        max_tokens=max_tokens,
        chunk_tokens=chunk_tokens,
        embeddings=embeddings,
        meta={"proxy_fingerprint": proxy_meta["fingerprint"], "proxy": proxy_meta.get("proxy")},
        progress=progress,
        restart=force,
    )
    for step, path in checkpoints:
        if recorder.pending(step):
            recorder.record(step, load_causal_lm(path).to(device))
    return recorder.finish()


def trajectory_fingerprint(tokenised_fp: str, proxy_fp: str, precision: str) -> str:
    """The fingerprint of a trajectory matrix: what it was scored on, by what, how."""
    return fingerprint(tokenised_fp, proxy_fp, precision, "score-v2")


def load_run_trajectories(run_dir: str | Path | RunDir) -> Trajectories:
    """Load ``RUN/trajectories`` and check it against the run's tokenised pool and proxy.

    A missing or stale artifact is refused with the stage that has to run next: ``s2l
    train-proxy`` when the proxy is missing or was trained on another tokenisation (a new
    ``s2l prepare`` since), ``s2l score`` otherwise."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    meta = load_tokenised_meta(run_dir)
    proxy_meta = read_proxy_meta(run_dir) if run_dir.proxy_meta.is_file() else None
    recorded = proxy_meta and proxy_meta.get("recorded_trajectories")
    scored = (run_dir.trajectories_dir / "meta.json").is_file()
    if proxy_meta is None and not scored:
        raise S2LError(f"{run_dir.root}: the proxy is not trained (run `s2l train-proxy` first)")
    stale_proxy = proxy_meta is not None and proxy_meta.get("tokenised_fingerprint") not in (
        None,
        meta["fingerprint"],
    )
    if stale_proxy and not scored:
        _check_proxy_matches(run_dir, proxy_meta, meta["fingerprint"])
    traj = Trajectories.load(run_dir.trajectories_dir)
    traj.check_matches(
        meta["pool_fingerprint"],
        meta["fingerprint"],
        where=str(run_dir.trajectories_dir),
        next_step="run `s2l train-proxy` first (the proxy was trained on the old one), then "
        "`s2l score`"
        if stale_proxy
        else None,
    )
    scored_by = traj.meta.get("proxy_fingerprint")
    if proxy_meta is not None and scored_by not in (None, proxy_meta["fingerprint"]):
        raise S2LError(
            f"{run_dir.trajectories_dir} were scored with an earlier proxy (the proxy was "
            "re-trained since); "
            + ("re-run `s2l train-proxy --force`" if recorded else "run `s2l score`")
        )
    return traj


def load_tokenised_meta(run_dir: RunDir) -> dict[str, Any]:
    """``tokenised.json`` of a prepared run (refused, naming `s2l prepare`, when missing)."""
    if not run_dir.tokenised_meta.is_file():
        raise S2LError(f"{run_dir.root}: no tokenised pool (run `s2l prepare POOL` first)")
    return read_json(run_dir.tokenised_meta)


def _check_proxy_matches(run_dir: RunDir, proxy_meta: dict[str, Any], tokenised_fp: str) -> None:
    """Refuse a proxy trained on another tokenisation: its vocabulary and the token ids of
    the pool no longer agree, so scoring with it would be wrong (or fail half-way)."""
    theirs = proxy_meta.get("tokenised_fingerprint")
    if theirs is not None and theirs != tokenised_fp:
        raise S2LError(
            f"{run_dir.proxy_dir} was trained on a different pool or tokenisation (fingerprint "
            f"{theirs}; {run_dir.tokenised_meta} has {tokenised_fp}: `s2l prepare` ran since); "
            "run `s2l train-proxy` first, then `s2l score`"
        )


def checkpoint_steps(
    total_steps: int, n_checkpoints: int | None = None, every: int | None = None
) -> list[int]:
    """The steps at which to record the proxy (and keep its weights, if asked).

    ``n_checkpoints`` evenly spaced points ending at the last step, or every ``every`` steps
    (the reference code: every 500). Exactly one of the two must be given.
    """
    if (n_checkpoints is None) == (every is None):
        raise S2LError("give either a number of checkpoints or a checkpoint interval, not both")
    if total_steps < 1:
        raise S2LError("training has no steps: the pool is empty or the batch too large")
    if every is not None:
        if every < 1:
            raise S2LError(f"checkpoint interval must be positive, not {every}")
        steps = list(range(every, total_steps + 1, every))
        if not steps:
            raise S2LError(f"checkpoint interval {every} exceeds the {total_steps} training steps")
        return steps
    assert n_checkpoints is not None
    if n_checkpoints < 1:
        raise S2LError(f"number of checkpoints must be positive, not {n_checkpoints}")
    if n_checkpoints > total_steps:
        raise S2LError(
            f"{n_checkpoints} checkpoints asked for, but training has only {total_steps} steps; "
            "ask for fewer checkpoints, more epochs or a smaller batch"
        )
    return sorted({round(total_steps * k / n_checkpoints) for k in range(1, n_checkpoints + 1)})


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
        self.parts = run_dir.trajectories_dir / "parts"
        units_fp = fingerprint(trajectory_fp, chunk_tokens, self.steps, embeddings)
        if self.state.is_main_process:
            if self.parts.is_dir() and (
                restart or not stage_is_current(self.parts / "parts.json", units_fp)
            ):
                shutil.rmtree(self.parts)
            self.parts.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.parts / "parts.json", {"fingerprint": units_fp})
            # The artifact is being rewritten: until finish() it is not complete.
            (run_dir.trajectories_dir / "meta.json").unlink(missing_ok=True)
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
                for pos, loss, emb in _score_batches(
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
                    "loss": "mean token NLL over response tokens + eos (nats)",
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
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.steps = None if steps is None else sorted(int(s) for s in steps)
        self.n_checkpoints = n_checkpoints
        self.precision, self.max_tokens, self.chunk_tokens = precision, max_tokens, chunk_tokens
        self.embeddings, self.fingerprint, self.meta = embeddings, fingerprint, meta
        self.pad_id, self.progress = pad_id, progress
        self.recorder: TrajectoryRecorder | None = None
        self.trajectories: Trajectories | None = None

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
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
            pad_id = getattr(model.config, "pad_token_id", None) or 0
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


def score_model(
    model: PreTrainedModel,
    arrays: TokenArrays,
    batches: Sequence[np.ndarray] | None = None,
    *,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    pad_id: int = 0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_batch: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Mean response loss of every example under ``model``: float32 array, shape (n,).

    ``batches`` are index arrays into ``arrays`` (by default :func:`length_batches` with
    ``max_tokens``); ``on_batch`` is called with the number of real tokens of each batch.
    """
    if batches is None:
        batches = length_batches(arrays.lengths, max_tokens)
    model.eval()
    out = np.empty(len(arrays.response_start), dtype=np.float32)
    for rows in batches:
        for _, loss, _ in _score_batches(
            model,
            arrays,
            np.asarray(rows),
            max_tokens=None,
            precision=precision,
            device=device,
            pad_id=pad_id,
        ):
            out[rows] = loss
        if on_batch is not None:
            on_batch(int(arrays.lengths[rows].sum()))
    return out


def _score_batches(
    model: PreTrainedModel,
    arrays: TokenArrays,
    rows: np.ndarray,
    *,
    max_tokens: int | None,
    precision: str,
    device: str | torch.device,
    pad_id: int,
    embeddings: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Score examples ``rows`` in length batches (``max_tokens`` None: one batch); yields
    (positions within ``rows``, losses, pooled embeddings or None) per batch."""
    device = torch.device(device)
    amp = autocast_dtype(precision)
    batches = (
        [np.arange(len(rows))]
        if max_tokens is None
        else length_batches(arrays.lengths[rows], max_tokens)
    )
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for pos in batches:
            batch = {k: v.to(device) for k, v in arrays.batch(rows[pos], pad_id).items()}
            result = response_losses(model, **batch, return_embeddings=embeddings)
            if embeddings:
                loss, emb = result
                yield pos, loss.float().cpu().numpy(), emb.float().cpu().numpy()
            else:
                yield pos, result.float().cpu().numpy(), None


def response_losses(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    return_embeddings: bool = False,
    max_logit_elements: int = 1 << 26,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood of the labelled tokens of each row: float32, shape (batch,).

    ``labels`` follow the Hugging Face convention (aligned with ``input_ids``, -100 where no
    loss). Only the response positions go through the output projection, in chunks of at most
    ``max_logit_elements`` logits, so memory stays flat whatever the vocabulary. With
    ``return_embeddings``, also the last hidden state mean-pooled over each row's real tokens:
    float32, shape (batch, hidden).
    """
    targets = labels[:, 1:]
    mask = targets != -100
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("every row needs at least one labelled token")
    rows = mask.nonzero(as_tuple=True)[0]
    gold = targets[mask]
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix, None)
    if head is None or backbone is None or _has_logit_postprocessing(model):
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=return_embeddings,
        )
        nll = F.cross_entropy(output.logits[:, :-1][mask].float(), gold, reduction="none")
        last_hidden = output.hidden_states[-1] if return_embeddings else None
    else:
        last_hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        hidden = last_hidden[:, :-1][mask]
        # at most 1024 rows of logits at a time: larger chunks fall out of cache (measured 4x
        # slower head + cross-entropy at 8000 rows, vocab 2048) and gain nothing
        chunk = max(1, min(1024, max_logit_elements // head.weight.shape[0]))
        nll = torch.cat(
            [
                F.cross_entropy(head(h).float(), g, reduction="none")
                for h, g in zip(hidden.split(chunk), gold.split(chunk), strict=True)
            ]
        )
    sums = torch.zeros(len(input_ids), dtype=torch.float32, device=nll.device)
    sums.index_add_(0, rows, nll.float())
    losses = sums / counts.to(sums.dtype)
    if not return_embeddings:
        return losses
    weights = attention_mask.unsqueeze(-1).float()
    pooled = (last_hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
    return losses, pooled


def _has_logit_postprocessing(model: PreTrainedModel) -> bool:
    config = model.config
    text_config = getattr(config, "get_text_config", lambda: config)()
    return any(
        getattr(text_config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING
    )


def reference_loss(model: PreTrainedModel, example: dict) -> float:
    """One example's response loss computed the plain way (``model(..., labels=...).loss``),
    as the public reference code does. For tests and benchmarks, not for scoring."""
    ids = torch.as_tensor(example["input_ids"], dtype=torch.long)[None]
    labels = ids.clone()
    labels[0, : int(example["response_start"])] = -100
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)
