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
from typing import TYPE_CHECKING

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.runs import RunDir, fingerprint

if TYPE_CHECKING:
    from smalltolarge.subset import SelectionResult

ORDER_FILE = "order.txt"


def nested_order(
    labels: np.ndarray, rng: np.random.Generator, *, outlier_max_size: int = 0
) -> np.ndarray:
    """A ranking of all rows whose every prefix is a water-filled, cluster-balanced sample.

    Args:
        labels: ``(n,)`` non-negative int cluster of each row.
        rng: draws the order among equal-size clusters (first, as ``water_fill`` does) and the
            order of the rows inside each cluster.
        outlier_max_size: clusters of at most this many rows come last, in a random order (as
            :func:`~smalltolarge.selection.balanced_sample` draws them only for budget the
            other clusters cannot fill).

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
    seed: int = 0,
    n_clusters: int | None = None,
    outlier_max_size: int = 0,
    name: str | None = None,
) -> list[SelectionResult]:
    """Write one S2L selection per budget from a single clustering, nested, with ``order.txt``.

    ``budgets`` are fractions or counts as for :func:`~smalltolarge.subset.select_subset`; the
    clustering is S2L's for the largest. Selections are named ``NAME-BUDGET`` (default
    ``s2l-nested-seedSEED-BUDGET``). Returns the
    :class:`~smalltolarge.subset.SelectionResult` of each budget, in the order given.

    Raises:
        S2LError: fewer than one budget, or a budget the pool cannot supply.
    """
    from smalltolarge.selection import make_selector, resolve_budget
    from smalltolarge.subset import run_inputs, write_selection

    if not budgets:
        raise S2LError("nested selection needs at least one budget")
    run = RunDir.of(run_dir)
    inputs = run_inputs(run)
    pool, signals = inputs.pool, inputs.signals
    counts = [resolve_budget(b, len(pool), n_selectable=signals.n) for b in budgets]
    selector = make_selector("s2l", n_clusters=n_clusters, outlier_max_size=outlier_max_size)
    selector.select(signals, max(counts), seed)  # fits the clustering: labels_, sizes
    labels = selector.labels_
    order = nested_order(
        labels,
        np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2]),
        outlier_max_size=outlier_max_size,
    )
    ranked_ids = "".join(f"{i}\n" for i in signals.ids[order])
    described = selector.settings()
    fp = fingerprint(inputs.fingerprint, "s2l-nested", str(described), sorted(counts), seed)
    prefix = name or f"s2l-nested-seed{seed}"
    results = []
    for budget, count in zip(budgets, counts, strict=True):
        picked = np.sort(order[:count])
        # one clustering serves every budget: only what is taken from each cluster differs
        selector.cluster_taken_ = np.bincount(labels[picked], minlength=selector.n_clusters_)
        record = {
            "fingerprint": fp,
            "method": "s2l",
            "nested": {"budgets": [str(b) for b in budgets], "counts": counts, "order": ORDER_FILE},
            "preset": "default",
            "settings": described,
        }
        out = run.selection_dir(f"{prefix}-{budget}")
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
