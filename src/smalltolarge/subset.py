"""Stage 5: select a subset of the pool with a selection method and write it out.

Reads the run's pool, tokenised pool and trajectories; writes
``selections/NAME/`` with ``ids.txt`` (selected ids, pool order), the subset in the input's
format (``subset.jsonl``, ``subset.parquet``, ...) and ``summary.json`` (written last: it marks
the selection complete). The same inputs, method, budget and seed give the same ids, bit for
bit; a selection whose summary records the same fingerprint is reused.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smalltolarge.data import Pool, load_pool, load_saved_pool, write_subset
from smalltolarge.errors import S2LError
from smalltolarge.formatting import load_tokenised
from smalltolarge.runs import RunDir, atomic_write_json, atomic_write_text, fingerprint, read_json
from smalltolarge.scoring import load_run_trajectories
from smalltolarge.selection import Signals, Stratified, make_selector, resolve_budget
from smalltolarge.trajectories import align_to_pool, import_trajectories


@dataclass
class SelectionResult:
    """A written selection: the selected ids (pool order), where it lies, and its summary."""

    ids: list[str]
    directory: Path
    subset_path: Path
    summary: dict[str, Any]
    reused: bool = False


def select_subset(
    run_dir: str | os.PathLike | RunDir,
    *,
    method: str = "s2l",
    budget: float | int | str = 0.3,
    seed: int = 0,
    n_clusters: int | None = None,
    stratify_by: str | None = None,
    name: str | None = None,
    trajectories: str | os.PathLike | None = None,
    trajectory_ids: str | os.PathLike | None = None,
    pool: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
    force: bool = False,
) -> SelectionResult:
    """Select ``budget`` examples of the run's pool with ``method`` and write them out.

    ``budget`` is a fraction of the pool (``0.3``, ``"30%"``) or a count (``3000``);
    ``stratify_by`` names the pool's source column to select per source (the reference code's
    mode) instead of globally. ``n_clusters`` is S2L's K (default 100); ``settings`` are further
    constructor arguments of the method. By default the run's own trajectories are used;
    ``trajectories`` (+ ``trajectory_ids`` for a ``.npy``) imports ones computed elsewhere (see
    :func:`~smalltolarge.trajectories.import_trajectories`), matched to the pool by id; the
    pool is the run's, or the file ``pool``.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if trajectories is None:
        inputs = _run_inputs(run_dir)
    else:
        inputs = _imported_inputs(run_dir, trajectories, trajectory_ids, pool)
    the_pool, signals = inputs.pool, inputs.signals

    n_budget = resolve_budget(budget, len(the_pool), n_selectable=signals.n)
    stratify = _check_stratify(the_pool, stratify_by)
    selector = make_selector(method, stratify=stratify, n_clusters=n_clusters, **(settings or {}))
    described = {k: v for k, v in vars(selector).items() if not k.endswith("_")}
    if isinstance(selector, Stratified):
        described = {"stratified": True, **vars(selector.selector)}
    name = name or _default_name(method, budget, seed, stratify)
    out = run_dir.selection_dir(name)
    fp = fingerprint(inputs.fingerprint, method, str(described), n_budget, seed, stratify)
    if not force and (out / "summary.json").is_file():
        summary = read_json(out / "summary.json")
        if summary.get("fingerprint") == fp:
            return SelectionResult(
                ids=(out / "ids.txt").read_text().splitlines(),
                directory=out,
                subset_path=out / summary["subset_file"],
                summary=summary,
                reused=True,
            )

    picked = selector.select(signals, n_budget, seed)
    selected_pool_index = np.sort(inputs.pool_index[picked])
    pool_rows = np.asarray(the_pool.dataset["row"], dtype=np.int64)[selected_pool_index]
    ids = [str(i) for i in np.asarray(the_pool.dataset["id"], dtype=object)[selected_pool_index]]

    (out / "summary.json").unlink(missing_ok=True)
    subset_path = write_subset(the_pool, pool_rows, out)
    atomic_write_text(out / "ids.txt", "".join(f"{i}\n" for i in ids))
    summary = _summary(selector, signals, picked, the_pool, budget=budget, seed=seed)
    summary.update(
        inputs.notes,
        fingerprint=fp,
        method=method,
        settings=described,
        name=name,
        subset_file=subset_path.name,
        trajectories_fingerprint=inputs.fingerprint,
        n_checkpoints=int(signals.losses.shape[1]),
    )
    atomic_write_json(out / "summary.json", summary)
    return SelectionResult(ids=ids, directory=out, subset_path=subset_path, summary=summary)


def _check_stratify(pool: Pool, stratify_by: str | None) -> bool:
    if stratify_by is None:
        return False
    column = pool.schema.get("source")
    if stratify_by not in (column, "source"):
        raise S2LError(
            f"--stratify-by {stratify_by}: the pool was loaded with "
            + (f"source column '{column}'" if column else "no source column")
            + f"; re-run `s2l prepare` with --source-column {stratify_by}"
        )
    if not pool.has_sources:
        raise S2LError("--stratify-by needs a source column; the pool has none")
    return True


def _default_name(method: str, budget: float | int | str, seed: int, stratify: bool) -> str:
    b = str(budget).strip().rstrip("%") if isinstance(budget, str) else budget
    if isinstance(budget, str) and budget.strip().endswith("%"):
        b = float(b) / 100
    return f"{method}{'-stratified' if stratify else ''}-{b}-seed{seed}"


@dataclass
class _Inputs:
    """What a selection reads: the pool, the signals of its selectable examples, where each
    signal row sits in the pool, a fingerprint of it all, and notes for the summary."""

    pool: Pool
    signals: Signals
    pool_index: np.ndarray
    fingerprint: str
    notes: dict[str, Any]


def _run_inputs(run_dir: RunDir) -> _Inputs:
    pool = load_saved_pool(run_dir)
    tokenised = load_tokenised(run_dir)
    traj = load_run_trajectories(run_dir)
    if list(traj.ids) != list(tokenised.dataset["id"]):
        raise S2LError(f"{run_dir.trajectories_dir}: ids do not match the tokenised pool")
    pool_index = np.asarray(tokenised.dataset["pool_index"], dtype=np.int64)
    signals = Signals(
        losses=np.asarray(traj.losses, dtype=np.float32),
        ids=np.asarray(traj.ids, dtype=object),
        sources=_sources(pool, pool_index),
        lengths=tokenised.response_lengths,
        embeddings=None if traj.embeddings is None else np.asarray(traj.embeddings, np.float32),
    )
    notes = {"n_scorable": len(tokenised), "n_excluded": len(tokenised.excluded)}
    return _Inputs(pool, signals, pool_index, traj.fingerprint or "", notes)


def _imported_inputs(run_dir: RunDir, path, ids, pool_path) -> _Inputs:
    pool = load_pool(pool_path) if pool_path is not None else load_saved_pool(run_dir)
    traj = import_trajectories(path, ids=ids)
    rows, pool_index, report = align_to_pool(traj, pool.ids, where=str(path))
    if report["non_finite"]:
        print(
            f"trajectories: {report['non_finite']} rows with a non-finite loss left out "
            f"(ids {', '.join(report['non_finite_ids'])}...)"
        )
    if report["without_trajectory"]:
        print(
            f"trajectories: {report['without_trajectory']} pool examples have no trajectory "
            f"and cannot be selected (ids {', '.join(report['without_trajectory_ids'])}...)"
        )
    signals = Signals(
        losses=np.asarray(traj.losses, dtype=np.float32)[rows],
        ids=np.asarray(traj.ids, dtype=object)[rows],
        sources=_sources(pool, pool_index),
    )
    notes = {
        "n_scorable": int(len(rows)),
        "n_excluded": int(len(pool) - len(rows)),
        "imported_trajectories": str(path),
        **report,
    }
    return _Inputs(
        pool, signals, pool_index, fingerprint(traj.fingerprint, pool.fingerprint), notes
    )


def _sources(pool: Pool, pool_index: np.ndarray) -> np.ndarray | None:
    if not pool.has_sources:
        return None
    return np.asarray(pool.dataset["source"], dtype=object)[pool_index]


def _summary(
    selector, signals: Signals, picked: np.ndarray, pool: Pool, *, budget, seed: int
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "budget": budget,
        "n_selected": int(len(picked)),
        "seed": seed,
        "n_pool": len(pool),
        "n_skipped_invalid": len(pool.skipped),
    }
    if signals.lengths is not None:
        summary["mean_response_tokens"] = {
            "pool": round(float(signals.lengths.mean()), 2),
            "subset": round(float(signals.lengths[picked].mean()), 2),
        }
    inner = selector.selector if isinstance(selector, Stratified) else selector
    if isinstance(selector, Stratified):
        sizes, taken = [], []
        for fitted in selector.selectors_.values():
            if hasattr(fitted, "cluster_sizes_"):
                sizes += fitted.cluster_sizes_.tolist()
                taken += fitted.cluster_taken_.tolist()
        if sizes:
            summary["clusters"] = _cluster_summary(np.array(sizes), np.array(taken))
        summary["source_quotas"] = selector.quotas_
    elif hasattr(inner, "cluster_sizes_"):  # S2L, k-means on embeddings
        summary["clusters"] = _cluster_summary(inner.cluster_sizes_, inner.cluster_taken_)
    if signals.sources is not None:
        in_pool = Counter(str(s) for s in signals.sources)
        in_subset = Counter(str(s) for s in signals.sources[picked])
        summary["sources"] = [
            {"source": s, "pool": in_pool[s], "subset": in_subset.get(s, 0)}
            for s in sorted(in_pool)
        ]
    return summary


def _cluster_summary(sizes: np.ndarray, taken: np.ndarray) -> dict[str, Any]:
    order = np.argsort(sizes, kind="stable")
    return {
        "n_clusters": int(len(sizes)),
        "sizes": [int(s) for s in sizes[order]],
        "taken": [int(t) for t in taken[order]],
        "taken_whole": int(((taken == sizes) & (sizes > 0)).sum()),
    }
