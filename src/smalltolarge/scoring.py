"""The scoring stage: every example's mean response-token loss at every saved checkpoint.

The cost S2L users pay is T checkpoints x N examples of forward passes; the loss kernel
(:mod:`smalltolarge.losses`) keeps each pass cheap, and :class:`~smalltolarge.recording.
TrajectoryRecorder` splits the work into resumable (checkpoint, chunk) units, shared between
the processes of an ``accelerate launch``, so a run killed at any point and restarted, with
any number of processes, recomputes only the unfinished units and ends with the same matrix,
bit for bit. When the proxy recorded its trajectories while it trained, there is nothing left
to do here.
"""

from __future__ import annotations

from pathlib import Path

from smalltolarge.errors import S2LError
from smalltolarge.formatting import load_tokenised
from smalltolarge.models import (
    default_device,
    load_causal_lm,
    load_tokenizer,
    pad_token_id,
    resolve_precision,
)
from smalltolarge.presets import apply_preset
from smalltolarge.progress import quiet_libraries_unless_progress
from smalltolarge.recording import TrajectoryRecorder, trajectory_fingerprint
from smalltolarge.runs import (
    RunDir,
    read_proxy_meta,
    recorded_checkpoints,
    stage_is_current,
    step_dirs,
)
from smalltolarge.settings import ScoreSettings
from smalltolarge.trajectories import Trajectories, check_proxy_matches


@quiet_libraries_unless_progress
def score_trajectories(
    run_dir: str | Path | RunDir,
    *,
    precision: str = ScoreSettings.precision,
    max_tokens: int = ScoreSettings.max_tokens,
    chunk_tokens: int = ScoreSettings.chunk_tokens,
    device: str | None = None,
    embeddings: bool = True,
    force: bool = False,
    preset: str | None = None,
    progress: bool = True,
) -> Trajectories:
    """Score every scorable example of ``run_dir`` at every saved proxy checkpoint.

    Reads ``tokenised/`` and the checkpoints ``proxy/proxy.json`` records (``proxy/step-*``;
    one missing is refused before anything is scored, naming it); writes ``trajectories/`` (see
    :mod:`smalltolarge.trajectories`), including ``embeddings.npy`` (the mean-pooled last
    hidden state at the final checkpoint, for embedding-based baselines) unless
    ``embeddings=False``. Resumable and multi-process, see the module docstring. Skipped when
    ``trajectories/`` already holds the result for the same inputs, unless ``force``.
    ``preset="reference"`` scores in fp32, as the reference code does.
    """
    run_dir = RunDir.of(run_dir)
    precision = apply_preset(preset, score_precision=(precision, ScoreSettings.precision))[
        "score_precision"
    ]
    ScoreSettings(precision=precision, max_tokens=max_tokens, chunk_tokens=chunk_tokens)
    tok_pool = load_tokenised(run_dir)
    proxy_meta = read_proxy_meta(run_dir)
    check_proxy_matches(run_dir, proxy_meta, tok_pool.fingerprint)
    device = device or default_device()
    precision = resolve_precision(precision, device)
    fp = trajectory_fingerprint(tok_pool.fingerprint, proxy_meta["fingerprint"], precision)
    if not force and stage_is_current(run_dir.trajectories_meta, fp):
        traj = Trajectories.load(run_dir.trajectories_dir)
        if progress:
            how = "recorded during proxy training" if traj.meta.get("recorded") else "up to date"
            print(f"scoring: {run_dir.trajectories_dir} {how}, skipped")
        return traj
    if not proxy_meta.get("save_checkpoints", True):
        raise S2LError(
            f"{run_dir.root}: the proxy was trained without saving checkpoints (its trajectories "
            "were recorded during training); re-train with --save-checkpoints to re-score"
        )
    checkpoints = recorded_checkpoints(run_dir, proxy_meta)
    unrecorded = sorted(set(step_dirs(run_dir.proxy_dir, "step-")) - set(checkpoints))
    if unrecorded and progress:
        print(
            f"scoring: {', '.join(str(path) for _, path in unrecorded)} not among the "
            f"checkpoints {run_dir.proxy_meta} records; not scored"
        )
    recorder = TrajectoryRecorder(
        run_dir,
        tok_pool,
        fp,
        [s for s, _ in checkpoints],
        pad_id=pad_token_id(load_tokenizer(run_dir.tokenizer_dir)),
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
