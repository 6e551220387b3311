"""Stratified (per-source) selection: balance the budget over data sources, then select inside.

The reference implementation of S2L selects per source when the pool mixes several datasets.
The budget is split over sources with the same water-filling as over clusters (smallest source
first, small sources taken whole), then the wrapped selector runs on each source's rows alone
with that source's quota. Wrapping :class:`~smalltolarge.selection.baselines.RandomSelector`
gives source-balanced random selection.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import Selector, Signals, cluster_summary, water_fill


class Stratified(Selector):
    """Run ``selector`` inside each source on a water-filled share of the budget.

    Args:
        selector: any :class:`~smalltolarge.selection.base.Selector`; it is not modified (each
            source gets a fitted copy). Its ``name`` is the wrapper's.

    Attributes (set by :meth:`select`):
        quotas_: source name -> number of examples selected from it.
        source_sizes_: source name -> number of selectable examples in it.
        selectors_: source name -> the fitted copy of ``selector`` that ran on that source
            (sources with a zero quota are absent).
        warnings_: the fitted copies' ``warnings_``, each prefixed with its source name.
        rows_: source name -> ``(n_source,)`` int64 rows of that source in ``signals``.
        labels_: ``(n,)`` int64 cluster of each example when ``selector`` clusters (each
            source's clusters numbered after the previous source's; a source with a zero quota
            is one cluster), else None.
    """

    def __init__(self, selector: Selector) -> None:
        self.selector = selector

    @property
    def name(self) -> str:
        """The wrapped selector's name."""
        return self.selector.name

    def settings(self) -> dict[str, Any]:
        """``{"stratified": True}`` and the wrapped selector's settings."""
        return {"stratified": True, **self.selector.settings()}

    def check_settings(self) -> None:
        """The wrapped selector's check."""
        self.selector.check_settings()

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Select ``budget`` examples of ``signals``, split over ``signals.sources``.

        Each source's seed is derived from ``seed`` and the source's rank among the source
        names sorted alphabetically, so the result does not depend on the order of the rows.
        """
        if signals.sources is None:
            raise S2LError("stratified selection needs a source column")
        try:
            names, source_of_row = np.unique(signals.sources, return_inverse=True)
        except TypeError as err:
            raise S2LError(f"source names must all be strings: {err}") from None
        source_of_row = source_of_row.reshape(-1)
        sizes = np.bincount(source_of_row, minlength=len(names))
        split_seed, *seeds = np.random.SeedSequence(seed).spawn(len(names) + 1)
        # Equal-size sources take the remainder of the split in a seeded random order.
        quotas = water_fill(sizes, budget, np.random.default_rng(split_seed))

        picked = [np.zeros(0, dtype=np.int64)]
        self.selectors_ = {}
        self.rows_ = {}
        for rank, name in enumerate(names):
            rows = np.flatnonzero(source_of_row == rank)
            self.rows_[str(name)] = rows
            if quotas[rank] == 0:
                continue
            inner = copy.deepcopy(self.selector)
            local = inner.select(
                signals.subset(rows), int(quotas[rank]), int(seeds[rank].generate_state(1)[0])
            )
            picked.append(rows[local])
            self.selectors_[str(name)] = inner

        self.warnings_ = [
            f"source {name}: {note}"
            for name, fitted in self.selectors_.items()
            for note in fitted.warnings_
        ]
        self.source_sizes_ = {str(name): int(size) for name, size in zip(names, sizes, strict=True)}
        self.quotas_ = {str(name): int(quota) for name, quota in zip(names, quotas, strict=True)}
        self.labels_ = self._joined_labels(signals.n)
        return np.sort(np.concatenate(picked)).astype(np.int64, copy=False)

    def summary_(self) -> dict[str, Any]:
        """``source_quotas`` and ``warnings``; for a clustering selector also the clusters of
        every source together (``clusters``), ``n_clusters_effective`` per source and
        ``n_clusters_requested``."""
        fitted = {name: inner.summary_() for name, inner in self.selectors_.items()}
        summary: dict[str, Any] = {}
        clusters = [s["clusters"] for s in fitted.values() if "clusters" in s]
        if clusters:
            summary["clusters"] = cluster_summary(
                np.array([size for c in clusters for size in c["sizes"]], dtype=np.int64),
                np.array([taken for c in clusters for taken in c["taken"]], dtype=np.int64),
            )
        summary["source_quotas"] = dict(self.quotas_)
        effective = {
            name: s["n_clusters_effective"]
            for name, s in fitted.items()
            if "n_clusters_effective" in s
        }
        if effective:
            summary["n_clusters_effective"] = effective
        for s in fitted.values():  # every copy asks for the same K
            if "n_clusters_requested" in s:
                summary["n_clusters_requested"] = s["n_clusters_requested"]
        summary["warnings"] = list(self.warnings_)
        return summary

    def _joined_labels(self, n: int) -> np.ndarray | None:
        """The fitted copies' labels as one ``(n,)`` array, or None if any does not cluster."""
        fitted = self.selectors_
        if not fitted or any(inner.labels_ is None for inner in fitted.values()):
            return None
        labels = np.empty(n, dtype=np.int64)
        offset = 0
        for source, rows in self.rows_.items():
            # a source with a zero quota was never clustered: it counts as one group
            local = fitted[source].labels_ if source in fitted else np.zeros(len(rows), np.int64)
            labels[rows] = local + offset
            offset += int(local.max()) + 1
        return labels
