"""The whole S2L chain in one call: prepare -> train proxy -> score -> select.

Every stage reads and writes its artifact in the run directory and is skipped when what is on
disk was made from the same inputs and settings (fingerprints), so re-running with a changed
budget only makes that selection, and a changed learning rate redoes training and scoring but
not tokenisation. A complete selection is never replaced in place: after a change of its
inputs, :func:`~smalltolarge.subset.select_subset` refuses it (another ``name``, or ``force``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalltolarge.prepare import prepare
from smalltolarge.progress import quiet_libraries_unless_progress
from smalltolarge.proxy import train_proxy
from smalltolarge.runs import RunDir
from smalltolarge.scoring import score_trajectories
from smalltolarge.settings import PrepareSettings, ProxySettings, SelectSettings
from smalltolarge.subset import (
    SelectionResult,
    check_target_set_use,
    make_pool_selector,
    select_subset,
)
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
    proxy_seed: int = ProxySettings.seed,
    preset: str | None = None,
    force: bool = False,
    progress: bool = True,
    **settings: Any,
) -> RunResult:
    """Run every S2L stage on ``pool_path`` in ``run_dir``.

    ``settings`` are the stages' own, by name, with their defaults and checks
    (:mod:`smalltolarge.settings`): those of :class:`~smalltolarge.settings.PrepareSettings`
    (``proxy``, ``template``, ``max_length``, the ``*_column`` names, ``split``,
    ``on_invalid``, ``dedup``, ``dedup_threshold``), of
    :class:`~smalltolarge.settings.ProxySettings` (``epochs``, ``learning_rate``,
    ``batch_size``, ``grad_accum``, ``warmup_ratio``, ``n_checkpoints``, ``checkpoint_every``,
    ``precision``, ``score_precision``, ``max_tokens``; its seed is ``proxy_seed``) and of
    :class:`~smalltolarge.settings.SelectSettings` (``method``, ``budget``, ``seed``,
    ``n_clusters``, ``stratify_by``). ``proxy_seed`` fixes the proxy's initialisation and data
    order, ``seed`` the selection, so several selection seeds share one proxy.

    Every setting is checked before the pool is prepared, and the budget and ``stratify_by``
    against the prepared pool before any training starts. ``force`` re-trains the proxy
    (re-recording the trajectories) and redoes the selection even when they are up to date,
    replacing a complete selection of the same name and what was derived from it.
    ``score_precision`` is the precision of scoring (default: ``precision``);
    ``preset="reference"`` applies the public reference code's settings at every stage (see
    :mod:`smalltolarge.presets`).

    Raises:
        TypeError: a keyword that is no stage's setting.
        S2LError: a setting out of range, or a problem with the pool (see each stage).
    """
    from smalltolarge.presets import apply_preset
    from smalltolarge.selection import make_selector, resolve_budget

    data, training, selection = stage_settings(settings, proxy_seed=proxy_seed)
    score_precision = (
        apply_preset(preset, score_precision=(training.score_precision, None))["score_precision"]
        or training.precision
    )
    training = training.replace(score_precision=score_precision)
    rd = RunDir(run_dir)
    make_selector(selection.method, n_clusters=selection.n_clusters)  # before the pool is read
    check_target_set_use(selection.target_set, selection.method, selection.stratify_by, preset)
    if selection.target_set is not None:  # read now, not after training
        from smalltolarge.rescore import load_target_set

        load_target_set(selection.target_set)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    prepared = prepare(pool_path, rd, **data.as_dict(), preset=preset, progress=progress)
    resolve_budget(selection.budget, len(prepared.pool), n_selectable=len(prepared.tokenised))
    make_pool_selector(
        prepared.pool,
        method=selection.method,
        n_clusters=selection.n_clusters,
        stratify_by=selection.stratify_by,
        preset=preset,
    )
    seconds["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    train_proxy(rd, **training.as_dict(), force=force, progress=progress)
    seconds["train_proxy"] = time.perf_counter() - t

    t = time.perf_counter()
    trajectories = score_trajectories(
        rd, precision=score_precision, max_tokens=training.max_tokens, progress=progress
    )
    seconds["score"] = time.perf_counter() - t

    t = time.perf_counter()
    result = select_subset(rd, **selection.as_dict(), preset=preset, force=force)
    seconds["select"] = time.perf_counter() - t
    return RunResult(rd.root, trajectories, result, seconds)


def stage_settings(
    settings: dict[str, Any], *, proxy_seed: int = ProxySettings.seed
) -> tuple[PrepareSettings, ProxySettings, SelectSettings]:
    """Route :func:`run_pipeline`'s keyword settings to the stage each belongs to, checked
    there; ``seed`` is the selection's, ``proxy_seed`` the proxy's."""
    prepare_names = set(PrepareSettings.names())
    proxy_names = set(ProxySettings.names()) - {"seed"}
    select_names = set(SelectSettings.names())
    unknown = set(settings) - prepare_names - proxy_names - select_names
    if unknown:
        raise TypeError(
            f"run_pipeline() got unexpected keyword arguments: {', '.join(sorted(unknown))}"
        )

    def pick(names: set[str]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k in names}

    return (
        PrepareSettings(**pick(prepare_names)),
        ProxySettings(seed=proxy_seed, **pick(proxy_names)),
        SelectSettings(**pick(select_names)),
    )
