"""Nested budgets: one S2L clustering, a ranking whose every prefix is a balanced selection.

``select_nested(RUN, budgets=("0.05", "0.1", "0.3"))`` clusters the trajectories once (as S2L
does for the largest budget), ranks the selectable examples with :func:`nested_order`, and
writes one selection per budget, each the first ``budget`` examples of the ranking, so every
smaller subset lies inside every larger one. Each selection directory also holds
``order.txt``: the ids of every selectable example, ranked; its first ``k`` lines are a
balanced S2L selection of ``k`` examples for any ``k``, so a budget can be picked later without
selecting again.

Why every prefix is balanced. :func:`~smalltolarge.selection.water_fill` visits clusters
smallest first (equal sizes in a random order) and gives each one
``remaining // unvisited``, capped at its size: the result is the max-min fair split of the
budget, every cluster that is not taken whole holding ``q`` or ``q + 1`` examples, the ``q + 1``
going to the clusters visited last. :func:`nested_order` gives the ``j``-th example (in a
uniformly random order) of a cluster the key ``(j, -visit rank)`` and sorts by it: a prefix of
length ``k`` then holds, for some ``q``, every example with ``j < q`` (so ``min(size, q)`` of each
cluster) plus the examples with ``j = q`` of the clusters visited last, exactly the water-filling
quotas for ``k`` with the same visit order; ``tests/test_nested.py`` checks the equality for every
prefix. Only the random order among equal-size clusters differs from an independent ``s2l``
selection at the same budget (one draw of it serves all budgets), so against a fresh selection
the per-cluster counts differ by at most one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.runs import RunDir, fingerprint
from smalltolarge.selection.stratified import Stratified
from smalltolarge.settings import SelectSettings, budget_label

if TYPE_CHECKING:
    from smalltolarge.subset import SelectionResult

ORDER_FILE = "order.txt"


def nested_order(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    outlier_max_size: int = 0,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """A ranking of all rows whose every prefix is a water-filled, cluster-balanced sample.

    Args:
        labels: ``(n,)`` non-negative int cluster of each row.
        rng: draws the order among equal-size clusters (first, as ``water_fill`` does) and the
            order of the rows inside each cluster.
        outlier_max_size: clusters of at most this many rows come last, in a random order (as
            :func:`~smalltolarge.selection.balanced_sample` draws them only for budget the
            other clusters cannot fill).
        positions: ``(n,)`` each row's rank inside its group (0, 1, ... per group), when the
            order inside a group is given (per-source selection: each source's own ranking);
            default: a uniformly random order inside each group.

    Returns:
        ``(n,)`` int64 permutation of the rows; for each ``k`` the first ``k`` hold
        ``water_fill(sizes, k)`` rows of each cluster (outliers aside) with the visit order
        drawn from the same ``rng`` state.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.bincount(labels)
    outlier = (sizes <= outlier_max_size) & (sizes > 0)
    effective = np.where(outlier, 0, sizes)
    visit = np.lexsort((rng.permutation(len(sizes)), effective))  # as water_fill visits
    rank = np.empty(len(sizes), dtype=np.int64)
    rank[visit] = np.arange(len(sizes))
    # each row's position j inside its cluster, in a uniformly random order
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    position = np.empty(n, dtype=np.int64)
    position[grouped] = np.arange(n) - starts[labels[grouped]]
    if positions is not None:
        position = np.asarray(positions, dtype=np.int64).reshape(-1)
    is_outlier = outlier[labels]
    last = rng.permutation(n)  # outliers' own random order
    key_j = np.where(is_outlier, last, position)
    key_rank = np.where(is_outlier, 0, -rank[labels])
    # np.lexsort sorts by the last key first: outliers last, then j, then latest-visited first
    return np.lexsort((key_rank, key_j, is_outlier)).astype(np.int64)


def select_nested(
    run_dir: str | os.PathLike | RunDir,
    budgets: Sequence[float | int | str],
    *,
    seed: int = SelectSettings.seed,
    n_clusters: int | None = SelectSettings.n_clusters,
    outlier_max_size: int | None = None,
    stratify_by: str | None = SelectSettings.stratify_by,
    name: str | None = None,
    preset: str | None = None,
    force: bool = False,
) -> list[SelectionResult]:
    """Write one S2L selection per budget from a single clustering, nested, with ``order.txt``.

    ``budgets`` are fractions or counts as for :func:`~smalltolarge.subset.select_subset`; the
    clustering is S2L's for the largest. With ``stratify_by`` (per source, as the reference
    code selects), each source is clustered and ranked alone and the sources are interleaved
    so that every prefix splits over the sources by water-filling, as the per-source selection
    does. ``outlier_max_size`` sets aside clusters of at most that many rows (None: 0, off);
    ``preset="reference"`` selects per source with outliers of at most 2 rows, as
    :func:`~smalltolarge.subset.select_subset` does. Selections are named ``NAME-BUDGET``
    (default ``s2l-nested[-PRESET][-stratified]-seedSEED-BUDGET``). As for ``select_subset``,
    selections already made from the same inputs and settings are reused unless ``force``, and
    a directory holding a selection made with other settings is not replaced without
    ``force``. Returns the :class:`~smalltolarge.subset.SelectionResult` of each budget, in the
    order given.

    As for :func:`~smalltolarge.subset.select_subset`, a complete selection made from the same
    inputs and settings is reused, and one made otherwise is never replaced in place: it is
    refused, before anything is clustered, unless ``force``.

    Raises:
        S2LError: fewer than one budget, a budget the pool cannot supply, a setting that
            contradicts the preset, or a complete selection in the way
            (:class:`~smalltolarge.subset.SelectionExistsError`).
    """
    from smalltolarge.presets import apply_preset
    from smalltolarge.selection import resolve_budget
    from smalltolarge.subset import (
        complete_selection,
        make_pool_selector,
        recorded_settings,
        run_inputs,
        write_selection,
    )

    if not budgets:
        raise S2LError("nested selection needs at least one budget")
    run = RunDir.of(run_dir)
    inputs = run_inputs(run)
    pool, signals = inputs.pool, inputs.signals
    counts = [resolve_budget(b, len(pool), n_selectable=signals.n) for b in budgets]
    selector = make_pool_selector(
        pool,
        method="s2l",
        n_clusters=n_clusters,
        stratify_by=stratify_by,
        settings={"outlier_max_size": outlier_max_size},
        preset=preset,
    )
    chosen = apply_preset(preset, outlier_max_size=(outlier_max_size, None))
    outliers = chosen["outlier_max_size"] or 0
    stratified = isinstance(selector, Stratified)
    described = selector.settings()
    fp = fingerprint(inputs.fingerprint, "s2l-nested", str(described), sorted(counts), seed)
    mode = f"-{preset}" if preset not in (None, "default") else ""
    prefix = name or f"s2l-nested{mode}{'-stratified' if stratified else ''}-seed{seed}"
    outs = [run.selection_dir(f"{prefix}-{budget}") for budget in budgets]
    # each budget's settings, and the budgets together: they make the clustering and the ranking
    nested_budgets = ",".join(budget_label(b) for b in budgets)
    recorded = {
        out: {
            **recorded_settings("s2l", preset, described, budget, seed),
            "nested": nested_budgets,
        }
        for out, budget in zip(outs, budgets, strict=True)
    }
    kept: dict[Path, SelectionResult] = {}
    if not force:  # every directory checked before anything is clustered or written
        now = {"pool": pool.fingerprint, "trajectories": inputs.fingerprint, "probe": None}
        for out in outs:
            complete = complete_selection(out, fp, now, recorded[out])
            if complete is not None:
                kept[out] = complete
    if len(kept) == len(outs):
        return [kept[out] for out in outs]

    selector.select(signals, max(counts), seed)  # fits the clustering: labels_, sizes
    labels = selector.labels_
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    if stratified:
        order = _per_source_order(selector, signals.n, rng, outliers)
    else:
        order = nested_order(labels, rng, outlier_max_size=outliers)
    ranked_ids = "".join(f"{i}\n" for i in signals.ids[order])
    results = []
    for budget, count, out in zip(budgets, counts, outs, strict=True):
        if out in kept:  # made from the same inputs and settings: the same selection
            results.append(kept[out])
            continue
        picked = np.sort(order[:count])
        # one clustering serves every budget: only what is taken from each cluster differs
        if stratified:
            _set_taken(selector, picked, signals.n)
        else:
            selector.cluster_taken_ = np.bincount(labels[picked], minlength=selector.n_clusters_)
        record = {
            "fingerprint": fp,
            "selection_settings": recorded[out],
            "method": "s2l",
            "nested": {"budgets": [str(b) for b in budgets], "counts": counts, "order": ORDER_FILE},
            "preset": preset or "default",
            "settings": described,
        }
        results.append(
            write_selection(
                out,
                inputs,
                selector,
                picked,
                budget=budget,
                seed=seed,
                record=record,
                files={ORDER_FILE: ranked_ids},
            )
        )
    return results


def _reused(out: Path, summary: dict) -> SelectionResult:
    """The selection already in ``out``, made from the same inputs and settings."""
    from smalltolarge.subset import SelectionResult

    ids = (out / "ids.txt").read_text().splitlines()
    return SelectionResult(ids, out, out / summary["subset_file"], summary, reused=True)


def _per_source_order(
    selector: Stratified, n: int, rng: np.random.Generator, outlier_max_size: int
) -> np.ndarray:
    """Each source ranked alone by :func:`nested_order` on its own clustering, then the
    sources interleaved by :func:`nested_order` over sources with those ranks as positions:
    every prefix splits over the sources by water-filling and is balanced inside each."""
    source = np.empty(n, dtype=np.int64)
    positions = np.empty(n, dtype=np.int64)
    for rank, (name, rows) in enumerate(selector.rows_.items()):
        source[rows] = rank
        fitted = selector.selectors_.get(name)
        if fitted is None:  # no quota even at the largest budget: a random order
            local = rng.permutation(len(rows))
        else:
            local = nested_order(fitted.labels_, rng, outlier_max_size=outlier_max_size)
        positions[rows[local]] = np.arange(len(rows))
    return nested_order(source, rng, positions=positions)


def _set_taken(selector: Stratified, picked: np.ndarray, n: int) -> None:
    """What each source and each of its clusters gives to ``picked``, for the summary."""
    chosen = np.zeros(n, dtype=bool)
    chosen[picked] = True
    for name, rows in selector.rows_.items():
        selector.quotas_[name] = int(chosen[rows].sum())
        fitted = selector.selectors_.get(name)
        if fitted is not None:
            fitted.cluster_taken_ = np.bincount(
                fitted.labels_[chosen[rows]], minlength=fitted.n_clusters_
            )
