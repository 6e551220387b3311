"""Targeted S2L: shift the cluster quotas toward the clusters a target set falls in.

A user with a large general pool and a small set of the task they care about (the *target
set*) scores the target examples at the same proxy checkpoints as the pool (they are never
trained on), so each has a loss trajectory like the pool's. Each target trajectory is assigned
to its nearest S2L cluster centroid, giving the target set's share of every cluster, ``p``.
The quota of cluster ``c`` then mixes plain S2L and the target's mix:

    demand_c = (1 - w) * u_c + w * t_c

where ``u`` are S2L's water-filling quotas (uniform over clusters, smallest first), ``t`` the
budget split in proportion to ``p`` (capped at each cluster's size, what a cluster cannot hold
passed on in proportion to the others' shares, then water-filled), and ``w`` in ``[0, 1]`` is
the one knob, ``target_weight``: 0 is plain S2L, 1 draws only from the clusters the target
occupies (as far as they hold enough rows). The demands are rounded to integers summing to the
budget (largest remainders first, never above a cluster's size), and the rows are drawn
uniformly within each cluster, as S2L does.
"""

from __future__ import annotations

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import water_fill


def assign_to_centroids(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``(m,)`` int64 index of each row of ``x`` ``(m, T)``'s nearest centroid (Euclidean)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
    return np.argmin(d, axis=1).astype(np.int64)


def proportional_quotas(sizes: np.ndarray, budget: int, share: np.ndarray) -> np.ndarray:
    """``budget`` split over groups in proportion to ``share``, capped at ``sizes``; what the
    groups with a share cannot hold is water-filled over the others. Integer, sums to
    ``min(budget, sizes.sum())``; deterministic."""
    sizes = np.asarray(sizes, dtype=np.int64)
    share = np.asarray(share, dtype=np.float64)
    quotas = np.zeros(len(sizes), dtype=np.int64)
    remaining = min(int(budget), int(sizes.sum()))
    open_ = (share > 0) & (sizes > 0)
    while remaining > 0 and open_.any():
        ideal = remaining * share * open_ / share[open_].sum()
        room = sizes - quotas
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        if add.sum() == 0:  # less than one row each: largest ideal first
            order = np.lexsort((np.arange(len(sizes)), -ideal))
            add = np.zeros_like(quotas)
            for g in order[:remaining]:
                if open_[g] and room[g] > 0:
                    add[g] = 1
        quotas += add
        remaining -= int(add.sum())
        open_ &= quotas < sizes
        if add.sum() == 0:
            break
    if remaining > 0:
        quotas += water_fill(sizes - quotas, remaining)
    return quotas


def targeted_quotas(
    sizes: np.ndarray,
    budget: int,
    target_share: np.ndarray,
    weight: float,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain S2L quotas and the quotas shifted toward the target (see the module docstring).

    Args:
        sizes: ``(K,)`` rows per cluster.
        budget: rows to select, ``<= sizes.sum()``.
        target_share: ``(K,)`` the target set's share of each cluster (sums to 1).
        weight: ``target_weight`` in ``[0, 1]``.
        rng: the random order among equal-size clusters of :func:`water_fill`.

    Returns:
        ``(plain, targeted)``: two ``(K,)`` int64 quota vectors summing to ``budget``, each
        at most ``sizes``; ``targeted == plain`` when ``weight == 0``.
    """
    if not 0 <= weight <= 1:
        raise S2LError(f"target_weight must be in [0, 1], not {weight!r}")
    sizes = np.asarray(sizes, dtype=np.int64)
    plain = water_fill(sizes, budget, rng)
    if weight == 0:
        return plain, plain.copy()
    toward = proportional_quotas(sizes, budget, target_share)
    demand = (1 - weight) * plain + weight * toward
    quotas = np.minimum(np.floor(demand + 1e-9).astype(np.int64), sizes)
    left = int(plain.sum() - quotas.sum())
    # largest remainder first (ties by cluster index), never above a cluster's size
    order = np.lexsort((np.arange(len(sizes)), -(demand - quotas)))
    for g in order:
        if left == 0:
            break
        if quotas[g] < sizes[g]:
            quotas[g] += 1
            left -= 1
    if left:
        quotas += water_fill(sizes - quotas, left)
    return plain, quotas
