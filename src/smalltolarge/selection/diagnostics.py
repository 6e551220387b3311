"""Diagnostics of a loss-trajectory matrix: does it carry a learning-curve shape, or one number?

S2L clusters the raw ``(n, T)`` trajectories with Euclidean k-means. When almost all of their
variation lies along the all-ones direction (examples differ in how high their loss is, not in
how it evolves), Euclidean distance is the difference of mean losses, and the clusters sort
examples by difficulty rather than by learning dynamics. :func:`trajectory_diagnostics` says
how much of the variation is *level* and how much is *shape*, how the clusters line up with the
data source and response length, and warns in plain words when the trajectories are
effectively one number per example.

Definitions (row ``x_i`` of ``T`` losses in nats; its level ``m_i = mean_t x_it``; ``xbar`` the
column means; ``1`` the all-ones ``T``-vector; ``C`` the ``(T, T)`` population covariance of
the rows, ``C = (1/n) sum_i (x_i - xbar)(x_i - xbar)^T``):

* total variance ``V = trace(C) = (1/n) sum_i ||x_i - xbar||^2`` (nats squared);
* level variance ``V_level = T * var_i(m_i) = 1^T C 1 / T``: the variance the trajectories
  would have if every row were flat at its own mean;
* shape variance ``V_shape = (1/n) sum_i ||s_i - sbar||^2`` with ``s_i = x_i - m_i 1`` (the row
  minus its own mean) and ``sbar`` the mean of the ``s_i``; ``V_shape = trace(P C P)`` with
  ``P = I - 1 1^T / T``.

The level and shape parts are orthogonal, so ``V = V_level + V_shape`` exactly, and the
*shape share* ``V_shape / V`` is the share of the total variance left after removing each
row's own mean; the *level share* is one minus it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import check_loss_shape

#: Above this share of variance in the first principal component, the trajectories are
#: reported as effectively one number per example.
PC1_SHARE_WARNING = 0.95

#: Below this shape share, the clustering is reported as sorting examples by loss level.
SHAPE_SHARE_WARNING = 0.05

#: Clusters of at most this many examples count as tiny (the reference code sets them aside).
TINY_CLUSTER = 2

# A total variance at most this fraction of the squared mean loss counts as zero: float32
# rounding of identical rows leaves a residue far below it, real spread is far above it.
_ZERO_VARIANCE = 1e-12

# Rows read per step; a float64 block of this many 12-checkpoint rows is about 25 MB.
_CHUNK_ROWS = 262_144


def trajectory_diagnostics(
    losses: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    n_length_bins: int = 10,
) -> dict[str, Any]:
    """How much of the trajectories' variation is level and how much is shape, in numbers.

    Reads ``losses`` in row chunks (one pass; a memory map is never copied as a whole) and
    works from the ``(T, T)`` covariance, so the cost is ``O(n T^2)`` time and ``O(T^2)``
    memory beyond the chunk; the cluster statistics add ``O(n)``.

    Args:
        losses: ``(n, T)`` loss trajectories (mean response loss in nats at each of ``T``
            checkpoints, in step order); any real dtype; may be a read-only memory map.
        labels: ``(n,)`` int cluster of each example (e.g. ``S2LSelector.labels_``), or None.
        sources: ``(n,)`` source name of each example, or None.
        lengths: ``(n,)`` response-token count of each example, or None.
        n_length_bins: response lengths are cut into this many quantile bins (deciles by
            default; tied lengths share a bin, so there may be fewer) for the NMI with length.

    Returns:
        A JSON-ready dict (plain floats, ints, lists, strings and None):

        * ``n_examples``, ``n_checkpoints``: ``n`` and ``T``;
        * ``mean_trajectory``: ``(T,)`` list, the mean loss at each checkpoint (nats);
        * ``total_variance``: ``V`` (nats squared);
        * ``pc_shares``: the share of ``V`` held by each principal component of the centred
          matrix, largest first (``T`` values summing to 1); ``pc1_share`` is the first;
        * ``level_share``, ``shape_share``: ``V_level / V`` and ``V_shape / V`` (module doc);
        * ``pc1_level_correlation``, ``pc1_final_correlation``: Pearson correlation of the
          examples' PC1 scores with their level ``m_i`` and with their loss at the last
          checkpoint. PC1's sign is arbitrary; it is oriented so that the correlation with
          the level is non-negative;
        * ``clusters``: None without ``labels``, else ``n_clusters`` (non-empty ones),
          ``size_min``, ``size_median``, ``size_max``, ``n_tiny`` (clusters of at most
          :data:`TINY_CLUSTER` examples) and ``largest_share`` (share of examples in the
          largest cluster);
        * ``nmi_source``, ``nmi_length``: normalised mutual information (arithmetic
          normalisation, in ``[0, 1]``) of the cluster labels with the source and with the
          length bin; None when ``labels`` or that column is missing;
        * ``warnings``: list of plain-words strings (empty when nothing is wrong).

        Every statistic that is undefined (no variance, fewer than 2 examples, a constant
        level) is None, never NaN.

    Raises:
        S2LError: for a ``losses`` that is not a 2-D real matrix with at least one checkpoint,
            a non-finite loss (naming its row), a side column whose length is not ``n``, or
            ``n_length_bins < 1``.
    """
    moments = trajectory_moments(losses)
    n, t = moments.n, moments.mean.shape[0]
    labels = _column("labels", labels, n)
    sources = _column("sources", sources, n)
    lengths = _column("lengths", lengths, n)
    if isinstance(n_length_bins, bool) or not isinstance(n_length_bins, (int, np.integer)):
        raise S2LError(f"n_length_bins must be an int >= 1, got {n_length_bins!r}")
    if n_length_bins < 1:
        raise S2LError(f"n_length_bins must be an int >= 1, got {n_length_bins!r}")

    result: dict[str, Any] = {
        "n_examples": n,
        "n_checkpoints": t,
        "mean_trajectory": [float(v) for v in moments.mean],
        "total_variance": None,
        "pc_shares": None,
        "pc1_share": None,
        "level_share": None,
        "shape_share": None,
        "pc1_level_correlation": None,
        "pc1_final_correlation": None,
        "clusters": None,
        "nmi_source": None,
        "nmi_length": None,
        "warnings": [],
    }
    warnings: list[str] = result["warnings"]
    result.update(_variance_facts(moments))

    if n < 2:
        warnings.append(
            f"only {n} trajectory(ies): there is no variation between examples to describe"
        )
    elif result["total_variance"] == 0.0:
        warnings.append(
            f"all {n} trajectories are identical: clustering cannot tell the examples apart, "
            "so any clustering-based selection is a random draw"
        )
    if t == 1:
        warnings.append(
            "each trajectory has a single checkpoint, so it is one number per example (its "
            "loss): S2L can only cluster examples by loss level, not by learning dynamics"
        )
    elif n >= 1 and moments.max_change == 0.0:
        warnings.append(
            "no example's loss changes between checkpoints: the checkpoints may all be the "
            "same model, or the trajectories were recorded wrongly"
        )
    elif result["pc1_share"] is not None:
        warnings.extend(_one_number_warnings(result))

    if labels is not None:
        result["clusters"] = _cluster_facts(labels)
        if sources is not None:
            result["nmi_source"] = _nmi(labels, sources)
        if lengths is not None:
            result["nmi_length"] = _nmi(labels, _length_bins(lengths, int(n_length_bins)))
    return result


@dataclass(frozen=True)
class TrajectoryMoments:
    """First and second moments of a trajectory matrix, from one chunked pass.

    Attributes:
        n: number of rows (examples).
        mean: ``(T,)`` float64 column means ``xbar`` (nats); zeros when ``n == 0``.
        covariance: ``(T, T)`` float64 population covariance ``C`` of the rows (nats squared);
            zeros when ``n < 2``.
        max_change: largest ``max_t x_it - min_t x_it`` over the rows (nats): 0 when every
            row is flat.
    """

    n: int
    mean: np.ndarray
    covariance: np.ndarray
    max_change: float


def trajectory_moments(losses: np.ndarray) -> TrajectoryMoments:
    """Column means and covariance of ``losses`` ``(n, T)``, read in row chunks.

    The rows are shifted by the first row before accumulating in float64, which leaves the
    covariance unchanged but avoids the cancellation of ``E[x x^T] - xbar xbar^T`` when the
    losses are large compared with their spread.

    Raises:
        S2LError: for a ``losses`` that is not a 2-D real matrix with at least one column, or
            a non-finite value (naming its row).
    """
    if not hasattr(losses, "ndim"):
        losses = np.asarray(losses)
    check_loss_shape(losses)
    n, t = losses.shape
    if not (np.issubdtype(losses.dtype, np.integer) or np.issubdtype(losses.dtype, np.floating)):
        raise S2LError(f"loss trajectories must be real numbers, got dtype {losses.dtype}")
    if n == 0:
        return TrajectoryMoments(0, np.zeros(t), np.zeros((t, t)), 0.0)

    shift = np.asarray(losses[0], dtype=np.float64)
    total = np.zeros(t)
    gram = np.zeros((t, t))
    max_change = 0.0
    for lo in range(0, n, _CHUNK_ROWS):
        block = np.asarray(losses[lo : lo + _CHUNK_ROWS], dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = lo + int(np.argmin(finite))
            raise S2LError(f"loss trajectory of row {row} is not finite: {block[row - lo]}")
        max_change = max(max_change, float(np.ptp(block, axis=1).max()))
        block -= shift
        total += block.sum(axis=0)
        gram += block.T @ block
    centre = total / n
    covariance = gram / n - np.outer(centre, centre)
    # Symmetric by construction up to rounding; eigh and the quadratic forms assume it.
    covariance = (covariance + covariance.T) / 2
    return TrajectoryMoments(n, shift + centre, covariance, max_change)


def level_shape_variances(covariance: np.ndarray) -> tuple[float, float]:
    """``(V_level, V_shape)`` of a ``(T, T)`` covariance (module doc), both clipped at 0."""
    t = covariance.shape[0]
    level = float(covariance.sum()) / t
    return max(level, 0.0), max(float(np.trace(covariance)) - level, 0.0)


def principal_components(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a ``(T, T)`` covariance, largest variance first.

    Returns:
        ``variances`` ``(T,)`` float64, descending, clipped at 0 (rounding can leave tiny
        negatives), and ``components`` ``(T, T)`` float64 whose row ``j`` is the unit
        direction of component ``j``. Each direction is oriented so that its dot product with
        the all-ones vector is non-negative (the level direction points to higher loss), which
        makes the sign deterministic.
    """
    variances, vectors = np.linalg.eigh(covariance)
    variances = np.clip(variances[::-1], 0.0, None)
    components = vectors[:, ::-1].T.copy()
    components[components.sum(axis=1) < 0] *= -1
    return variances, components


def _variance_facts(moments: TrajectoryMoments) -> dict[str, Any]:
    """Variance shares and PC1 correlations from the moments (None where undefined)."""
    cov, t = moments.covariance, moments.covariance.shape[0]
    total = max(float(np.trace(cov)), 0.0)
    scale = max(1.0, float(np.mean(moments.mean**2)))
    if moments.n < 2:
        return {}
    if total <= _ZERO_VARIANCE * scale:
        return {"total_variance": 0.0}
    variances, components = principal_components(cov)
    level, shape = level_shape_variances(cov)
    pc1 = components[0]
    level_direction = np.full(t, 1.0 / t)
    final_direction = np.eye(t)[-1]
    level_corr = _correlation(cov, pc1, level_direction)
    if level_corr is not None and level_corr < 0:
        # Only when PC1 is orthogonal to the ones vector can the orientation above leave a
        # negative correlation through rounding; flip so the documented sign holds.
        pc1, level_corr = -pc1, -level_corr
    return {
        "total_variance": total,
        "pc_shares": [float(v / total) for v in variances],
        "pc1_share": float(variances[0] / total),
        "level_share": level / total,
        "shape_share": shape / total,
        "pc1_level_correlation": level_corr,
        "pc1_final_correlation": _correlation(cov, pc1, final_direction),
    }


def _correlation(cov: np.ndarray, a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of the linear scores ``a . x`` and ``b . x`` under covariance ``cov``.

    None when either score has (numerically) no variance.
    """
    var_a, var_b = float(a @ cov @ a), float(b @ cov @ b)
    floor = _ZERO_VARIANCE * max(float(np.trace(cov)), 0.0)
    if var_a <= floor or var_b <= floor:
        return None
    return float(np.clip((a @ cov @ b) / np.sqrt(var_a * var_b), -1.0, 1.0))


def _one_number_warnings(result: dict[str, Any]) -> list[str]:
    """Plain-words warnings when PC1 or the level dominates the variance."""
    out = []
    pc1, shape = result["pc1_share"], result["shape_share"]
    if pc1 > PC1_SHARE_WARNING:
        corr = result["pc1_level_correlation"]
        what = (
            f"; it correlates {corr:.2f} with each example's mean loss" if corr is not None else ""
        )
        out.append(
            f"the trajectories are effectively one number per example: the first principal "
            f"component holds {pc1:.1%} of the variance (warning above "
            f"{PC1_SHARE_WARNING:.0%}){what}"
        )
    if shape < SHAPE_SHARE_WARNING:
        out.append(
            f"only {shape:.1%} of the variance is left once each example's mean loss is "
            f"removed (warning below {SHAPE_SHARE_WARNING:.0%}): Euclidean k-means on these "
            "trajectories mostly sorts examples by loss level, not by the shape of their "
            "learning curve; a shape-aware method (s2l-shape, s2l-whitened) lets the shape count"
        )
    return out


def _cluster_facts(labels: np.ndarray) -> dict[str, Any]:
    """Sizes of the non-empty clusters of ``labels``."""
    if labels.shape[0] == 0:
        return {"n_clusters": 0}
    _, sizes = np.unique(labels, return_counts=True)
    return {
        "n_clusters": int(len(sizes)),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "n_tiny": int((sizes <= TINY_CLUSTER).sum()),
        "largest_share": float(sizes.max() / labels.shape[0]),
    }


def _nmi(labels: np.ndarray, other: np.ndarray) -> float | None:
    """Normalised mutual information of two labelings (None on an empty pool)."""
    from sklearn.metrics import normalized_mutual_info_score

    if labels.shape[0] == 0:
        return None
    return float(normalized_mutual_info_score(other, labels))


def _length_bins(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """``(n,)`` int quantile bin of each length; equal lengths always share a bin."""
    if not np.issubdtype(lengths.dtype, np.number):
        raise S2LError(f"response lengths must be numbers, got dtype {lengths.dtype}")
    values = lengths.astype(np.float64)
    if not np.isfinite(values).all():
        raise S2LError("response lengths must be finite numbers")
    if values.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right").astype(np.int64)


def _column(name: str, values: object, n: int) -> np.ndarray | None:
    """``values`` as a 1-D array of ``n`` rows (None stays None), else S2LError."""
    if values is None:
        return None
    array = values if isinstance(values, np.ndarray) else np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n:
        raise S2LError(
            f"{name} must have shape ({n},) to match {n} loss trajectories, got shape {array.shape}"
        )
    return array
