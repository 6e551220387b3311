"""Baseline selectors that S2L is compared against."""

from __future__ import annotations

import numpy as np

from smalltolarge.selection.base import Signals, check_budget, check_seed


class RandomSelector:
    """Uniform random selection without replacement (the standard baseline)."""

    name = "random"

    def select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Draw ``budget`` of the ``n`` examples uniformly without replacement.

        Returns:
            ``(budget,)`` sorted unique int64 row indices into ``signals``.
        """
        check_budget(budget, signals.n)
        rng = np.random.default_rng(check_seed(seed))
        return np.sort(rng.choice(signals.n, size=budget, replace=False)).astype(np.int64)
