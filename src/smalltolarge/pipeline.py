"""The whole S2L chain in one call: prepare -> train proxy -> score -> select.

Every stage reads and writes its artifact in the run directory and is skipped when what is on
disk was made from the same inputs and settings (fingerprints), so re-running with a changed
budget only redoes the selection, and a changed learning rate redoes training, scoring and
selection but not tokenisation.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from smalltolarge.losses import DEFAULT_MAX_TOKENS
from smalltolarge.prepare import prepare
from smalltolarge.progress import quiet_libraries_unless_progress
from smalltolarge.proxy import check_proxy_settings, train_proxy
from smalltolarge.runs import RunDir
from smalltolarge.scoring import score_trajectories
from smalltolarge.subset import SelectionResult, make_pool_selector, select_subset
from smalltolarge.trajectories import Trajectories


@dataclass
class RunResult:
    """What :func:`run_pipeline` produced, with the wall seconds of each stage."""

    run_dir: Path
    trajectories: Trajectories
    selection: SelectionResult
    seconds: dict[str, float] = field(default_factory=dict)


@quiet_libraries_unless_progress
def run_pipeline(
    pool_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    # stage 1-2: load and tokenise
    proxy: str = "tiny",
    template: str = "alpaca",
    max_length: int = 512,
    prompt_column: str | None = None,
    input_column: str | None = None,
    response_column: str | None = None,
    source_column: str | None = None,
    id_column: str | None = None,
    split: str = "train",
    on_invalid: str = "error",
    # stage 3: train the proxy
    epochs: float = 3.0,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    grad_accum: int = 1,
    warmup_ratio: float = 0.03,
    n_checkpoints: int | None = 12,
    checkpoint_every: int | None = None,
    precision: str = "auto",
    score_precision: str | None = None,
    proxy_seed: int = 0,
    # stage 4: score
    max_tokens: int = DEFAULT_MAX_TOKENS,
    # stage 5: select
    method: str = "s2l",
    budget: float | int | str = 0.3,
    n_clusters: int | None = None,
    stratify_by: str | None = None,
    seed: int = 0,
    preset: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run every S2L stage on ``pool_path`` in ``run_dir``; see each stage for its settings.

    ``proxy_seed`` fixes the proxy's initialisation and data order, ``seed`` the selection, so
    several selection seeds share one proxy. Every setting is checked before the pool is
    prepared, and the budget and ``stratify_by`` against the prepared pool before any training
    starts. ``force`` re-trains the proxy (re-recording the trajectories) and redoes the
    selection even when they are up to date. ``score_precision`` is the precision of scoring
    (default: ``precision``); ``preset="reference"`` applies the public reference code's
    settings at every stage (see :mod:`smalltolarge.presets`).
    """
    from smalltolarge.presets import apply_preset
    from smalltolarge.selection import make_selector, resolve_budget

    score_precision = (
        apply_preset(preset, score_precision=(score_precision, None))["score_precision"]
        or precision
    )
    rd = RunDir(run_dir)
    check_proxy_settings(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        n_checkpoints=n_checkpoints,
        checkpoint_every=checkpoint_every,
        precision=precision,
        score_precision=score_precision,
        max_tokens=max_tokens,
    )
    make_selector(method, n_clusters=n_clusters)  # method and K, before the pool is read
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    prepared = prepare(
        pool_path,
        rd,
        proxy=proxy,
        template=template,
        max_length=max_length,
        prompt_column=prompt_column,
        input_column=input_column,
        response_column=response_column,
        source_column=source_column,
        id_column=id_column,
        split=split,
        on_invalid=on_invalid,
        preset=preset,
        progress=progress,
    )
    resolve_budget(budget, len(prepared.pool), n_selectable=len(prepared.tokenised))
    make_pool_selector(
        prepared.pool,
        method=method,
        n_clusters=n_clusters,
        stratify_by=stratify_by,
        preset=preset,
    )
    seconds["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    train_proxy(
        rd,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        n_checkpoints=n_checkpoints,
        checkpoint_every=checkpoint_every,
        seed=proxy_seed,
        precision=precision,
        score_precision=score_precision,
        force=force,
        progress=progress,
    )
    seconds["train_proxy"] = time.perf_counter() - t

    t = time.perf_counter()
    trajectories = score_trajectories(
        rd, precision=score_precision, max_tokens=max_tokens, progress=progress
    )
    seconds["score"] = time.perf_counter() - t

    t = time.perf_counter()
    selection = select_subset(
        rd,
        method=method,
        budget=budget,
        seed=seed,
        n_clusters=n_clusters,
        stratify_by=stratify_by,
        preset=preset,
        force=force,
    )
    seconds["select"] = time.perf_counter() - t
    return RunResult(rd.root, trajectories, selection, seconds)
