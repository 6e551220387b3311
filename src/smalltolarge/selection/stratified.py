"""Stratified (per-source) selection: balance the budget over data sources, then select inside.

The reference implementation of S2L selects per source when the pool mixes several datasets.
The budget is split over sources with the same water-filling as over clusters (smallest source
first, small sources taken whole), then the wrapped selector runs on each source's rows alone
with that source's quota. Wrapping :class:`~smalltolarge.selection.baselines.RandomSelector`
gives source-balanced random selection.
"""

from __future__ import annotations

import copy

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import Selector, Signals, check_budget, check_seed, water_fill


class Stratified:
    """Run ``selector`` inside each source on a water-filled share of the budget.

    Args:
        selector: any :class:`~smalltolarge.selection.base.Selector`; it is not modified (each
            source gets a fitted copy).

    Attributes (set by :meth:`select`):
        quotas_: source name -> number of examples selected from it.
        source_sizes_: source name -> number of selectable examples in it.
        selectors_: source name -> the fitted copy of ``selector`` that ran on that source
            (sources with a zero quota are absent).
        warnings_: the fitted copies' ``warnings_``, each prefixed with its source name.
        rows_: source name -> ``(n_source,)`` int64 rows of that source in ``signals``.
    """

    def __init__(self, selector: Selector) -> None:
        self.selector = selector
        self.name = f"{selector.name}"

    def select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Select ``budget`` examples of ``signals``, split over ``signals.sources``.

        Each source's seed is derived from ``seed`` and the source's rank among the source
        names sorted alphabetically, so the result does not depend on the order of the rows.

        Returns:
            ``(budget,)`` sorted unique int64 row indices into ``signals``.
        """
        if signals.sources is None:
            raise S2LError("stratified selection needs a source column")
        check_budget(budget, signals.n)
        seed = check_seed(seed)
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
            for note in getattr(fitted, "warnings_", [])
        ]
        self.source_sizes_ = {str(name): int(size) for name, size in zip(names, sizes, strict=True)}
        self.quotas_ = {str(name): int(quota) for name, quota in zip(names, quotas, strict=True)}
        return np.sort(np.concatenate(picked)).astype(np.int64, copy=False)
