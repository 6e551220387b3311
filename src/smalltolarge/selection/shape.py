"""Shape-aware S2L: cluster a representation of the trajectories in which their shape counts.

Plain S2L clusters the raw loss trajectories with Euclidean k-means. On real proxies the
centred trajectory matrix is nearly rank one along the all-ones direction (see
:mod:`smalltolarge.selection.diagnostics`): examples differ mostly in how high their loss is,
so Euclidean k-means sorts them by loss level and the shape of the learning curve (learned
fast or slowly, late drops, forgetting) hardly enters the clusters. Each selector here is
S2L — k-means, then water-filled sampling over clusters, smallest first — on another matrix:

* ``s2l-whitened`` (:class:`WhitenedS2LSelector`): PCA-whitened trajectories;
* ``s2l-shape`` (:class:`ShapeS2LSelector`): the standardised level plus the row-centred
  shape, with a set relative weight;
* ``s2l-cartography`` (:class:`CartographyS2LSelector`): the dataset-cartography coordinates
  (confidence, variability) of each example.

Each feature matrix is built in row chunks from moments computed in one chunked pass, so a
memory-mapped loss matrix is read twice and never copied whole; the ``(n, d)`` float32
features (``d <= T + 1``) are materialised for k-means.
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import Signals
from smalltolarge.selection.diagnostics import (
    level_shape_variances,
    principal_components,
    trajectory_moments,
)
from smalltolarge.selection.s2l import S2LSelector

# S2L's own settings keep S2L's defaults, written once in s2l.py.
_S2L_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(S2LSelector.__init__).parameters.items()
    if name != "self"
}

# Rows turned into features per step (float64 temporaries of ~25 MB at T = 12).
_CHUNK_ROWS = 262_144

# A variance at most this fraction of the total counts as zero (rounding residue).
_ZERO_VARIANCE = 1e-12


class WhitenedS2LSelector(S2LSelector):
    """S2L on PCA-whitened trajectories: every kept direction of variation weighs the same.

    Rationale: in raw trajectories the level direction holds 95-98% of the variance, so it
    decides Euclidean distances on its own. Whitening rescales each principal component of
    the centred ``(n, T)`` matrix to unit variance, so k-means sees the level and the main
    shape directions (overall slope, early versus late learning, bends) on an equal footing;
    Euclidean distance on whitened data is the Mahalanobis distance of the trajectories.

    Which components are kept (fixed in advance, not tuned on the evaluation set): the top
    ``k`` where

    * ``n_components`` int ``>= 1``: ``k = n_components`` (at most ``T``);
    * ``n_components`` float in ``(0, 1]``: the smallest ``k`` whose components together hold
      at least that share of the total variance (default 0.99);

    and in both cases a component holding less than ``min_variance_share`` of the total
    variance is never kept (default 0.001), because whitening would blow a direction of
    rounding or measurement noise up to the same weight as the level. At least one component
    is kept. When all trajectories are identical there is nothing to whiten and every example
    gets the same (zero) feature.

    Args:
        n_clusters: number of k-means clusters ``K`` asked for (see S2LSelector).
        n_iter: k-means iterations.
        backend: ``"faiss"`` (default) or ``"sklearn"``.
        min_rows_per_cluster, outlier_max_size: as for
            :class:`~smalltolarge.selection.s2l.S2LSelector` (same defaults).
        n_components: int count or float variance share, as above.
        min_variance_share: float in ``[0, 1)``, the floor above.

    Attributes (set by :meth:`select`, besides those of
    :class:`~smalltolarge.selection.s2l.S2LSelector`; ``centroids_`` are in whitened units):
        mean_: ``(T,)`` float64 mean trajectory (nats).
        components_: ``(k, T)`` float64 unit directions of the kept components.
        explained_variance_: ``(k,)`` float64 variance of each kept component (nats squared).
        explained_variance_ratio_: ``(k,)`` float64 share of the total variance of each.
        n_components_: ``k``.
    """

    name = "s2l-whitened"

    def __init__(
        self,
        n_clusters: int = _S2L_DEFAULTS["n_clusters"],
        n_iter: int = _S2L_DEFAULTS["n_iter"],
        backend: str = _S2L_DEFAULTS["backend"],
        min_rows_per_cluster: int = _S2L_DEFAULTS["min_rows_per_cluster"],
        outlier_max_size: int = _S2L_DEFAULTS["outlier_max_size"],
        n_components: int | float = 0.99,
        min_variance_share: float = 1e-3,
    ) -> None:
        super().__init__(n_clusters, n_iter, backend, min_rows_per_cluster, outlier_max_size)
        self.n_components = n_components
        self.min_variance_share = min_variance_share

    def _features(self, signals: Signals) -> np.ndarray:
        """``(n, k)`` float32 whitened principal-component scores of the trajectories."""
        losses = signals.losses
        moments = trajectory_moments(losses)
        variances, components = principal_components(moments.covariance)
        total = float(variances.sum())
        if total <= _ZERO_VARIANCE * max(1.0, float(np.mean(moments.mean**2))):
            k, projection = 1, np.zeros((losses.shape[1], 1))
            ratios = np.zeros(1)
        else:
            ratios = variances / total
            k = self._kept(ratios)
            projection = components[:k].T / np.sqrt(variances[:k])
        self.mean_ = moments.mean
        self.components_ = components[:k]
        self.explained_variance_ = variances[:k]
        self.explained_variance_ratio_ = ratios[:k]
        self.n_components_ = k
        return _project(losses, moments.mean, projection)

    def _kept(self, ratios: np.ndarray) -> int:
        """Number of components kept for variance shares ``ratios`` (descending)."""
        if isinstance(self.n_components, numbers.Integral):
            k = min(int(self.n_components), len(ratios))
        else:
            # The tolerance keeps a share of exactly 1.0 from asking for more than exists.
            reached = np.cumsum(ratios) >= float(self.n_components) - 1e-12
            k = int(np.argmax(reached)) + 1 if reached.any() else len(ratios)
        above_floor = int((ratios >= self.min_variance_share).sum())
        return max(1, min(k, above_floor))

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of range (S2L's, ``n_components``, the floor)."""
        super().check_settings()
        value = self.n_components
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise S2LError(
                f"{self.name} setting n_components must be an int >= 1 or a variance share "
                f"in (0, 1], got {value!r}"
            )
        if isinstance(value, numbers.Integral):
            if value < 1:
                raise S2LError(
                    f"{self.name} setting n_components must be an int >= 1 or a variance "
                    f"share in (0, 1], got {value!r}"
                )
        elif not 0 < float(value) <= 1:
            raise S2LError(
                f"{self.name} setting n_components as a variance share must lie in (0, 1], "
                f"got {value!r}"
            )
        _check_share(self.name, "min_variance_share", self.min_variance_share, upper_open=True)


class ShapeS2LSelector(S2LSelector):
    """S2L on level plus shape: the mean loss and the row-centred curve, weighed as set.

    Each trajectory ``x_i`` (``T`` losses, nats) is split into its level ``m_i = mean_t x_it``
    and its shape ``s_i = x_i - m_i 1``, the curve with its own mean subtracted. The features
    are ``[a * (m_i - mean(m)) / std(m),  b * (s_i - mean(s))]`` (``1 + T`` columns), with
    ``a = sqrt(1 - shape_weight)`` and ``b = sqrt(shape_weight / V_shape)``, where
    ``V_shape`` is the total variance of the shapes. So the level part has total variance
    ``1 - shape_weight`` and the shape part ``shape_weight``: the default 0.5 gives both equal
    weight in the Euclidean distance, 0 is k-means on the mean loss alone and 1 on the shape
    alone.

    Rationale: this keeps what S2L clusters on (difficulty, via the level) but stops it from
    drowning the shape, whose variance is only a few percent of the raw total. The shape is
    the row *minus* its mean rather than divided by it: losses are log-probabilities, so a
    difference of losses is a log-likelihood ratio and means the same at every level, while a
    ratio blows up for the well-learned examples whose loss approaches zero. Inside the shape
    part the directions keep their natural proportions (unlike ``s2l-whitened``).

    Degenerate parts get zero weight: a constant level (every example at the same mean loss)
    or no shape variance (``T == 1``, or all rows parallel) leaves that part's columns at 0.

    Args:
        n_clusters: number of k-means clusters ``K`` asked for (see S2LSelector).
        n_iter: k-means iterations.
        backend: ``"faiss"`` (default) or ``"sklearn"``.
        min_rows_per_cluster, outlier_max_size: as for
            :class:`~smalltolarge.selection.s2l.S2LSelector` (same defaults).
        shape_weight: float in ``[0, 1]``, the share of the feature variance given to shape.

    Attributes (set by :meth:`select`, besides those of
    :class:`~smalltolarge.selection.s2l.S2LSelector`; ``centroids_`` are in feature units):
        level_scale_: ``a / std(m)`` (per nat), 0 when the level part is dropped.
        shape_scale_: ``b`` (per nat), 0 when the shape part is dropped.
    """

    name = "s2l-shape"

    def __init__(
        self,
        n_clusters: int = _S2L_DEFAULTS["n_clusters"],
        n_iter: int = _S2L_DEFAULTS["n_iter"],
        backend: str = _S2L_DEFAULTS["backend"],
        min_rows_per_cluster: int = _S2L_DEFAULTS["min_rows_per_cluster"],
        outlier_max_size: int = _S2L_DEFAULTS["outlier_max_size"],
        shape_weight: float = 0.5,
    ) -> None:
        super().__init__(n_clusters, n_iter, backend, min_rows_per_cluster, outlier_max_size)
        self.shape_weight = shape_weight

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of range (S2L's and ``shape_weight``)."""
        super().check_settings()
        _check_share(self.name, "shape_weight", self.shape_weight, upper_open=False)

    def _features(self, signals: Signals) -> np.ndarray:
        """``(n, 1 + T)`` float32 weighted level and shape features."""
        losses = signals.losses
        t = losses.shape[1]
        moments = trajectory_moments(losses)
        level_var, shape_var = level_shape_variances(moments.covariance)
        floor = _ZERO_VARIANCE * max(1.0, float(np.mean(moments.mean**2)))
        # var(m) = V_level / T (module doc of diagnostics).
        level_sd = np.sqrt(level_var / t)
        weight = float(self.shape_weight)
        level_scale = np.sqrt(1.0 - weight) / level_sd if level_var > floor else 0.0
        shape_scale = np.sqrt(weight / shape_var) if shape_var > floor else 0.0
        self.level_scale_ = float(level_scale)
        self.shape_scale_ = float(shape_scale)

        # One linear map does both parts: column 0 is the scaled row mean, the rest the scaled
        # row minus its mean; centring by the mean trajectory centres both.
        level_map = np.full((t, 1), level_scale / t)
        shape_map = shape_scale * (np.eye(t) - np.full((t, t), 1.0 / t))
        return _project(losses, moments.mean, np.hstack([level_map, shape_map]))


class CartographyS2LSelector(S2LSelector):
    """S2L on dataset-cartography coordinates: k-means on (confidence, variability).

    Dataset cartography (Swayamdipta et al., "Dataset Cartography: Mapping and Diagnosing
    Datasets with Training Dynamics", EMNLP 2020) places each example by the mean
    (*confidence*) and the standard deviation (*variability*) over training of the model's
    probability of the gold answer; the map's regions (easy-to-learn, ambiguous,
    hard-to-learn) play different roles in training. For a response of many tokens the
    probability used here is ``exp(-loss)``, the geometric-mean token probability, so
    confidence is ``mean_t exp(-x_it)`` and variability ``std_t exp(-x_it)`` (population std
    over the ``T`` checkpoints). Each coordinate is standardised over the pool (zero mean,
    unit variance; a constant one is left at 0) and S2L's k-means and water-filled sampling
    then balance the selection over the regions of the map.

    Rationale: on a probability scale the well-learned examples, whose losses differ by
    fractions of a nat near zero, are spread out, while hard examples (high loss) are
    compressed together; and variability weighs how much an example changed over training as
    much as where it ended, which raw Euclidean distance on losses does not.

    Args:
        The settings of :class:`~smalltolarge.selection.s2l.S2LSelector` (``n_clusters``,
        ``n_iter``, ``backend``, ...), with the same defaults.

    Attributes (set by :meth:`select`, besides those of
    :class:`~smalltolarge.selection.s2l.S2LSelector`):
        coordinates_: ``(n, 2)`` float32 unstandardised (confidence, variability).
    """

    name = "s2l-cartography"

    def _features(self, signals: Signals) -> np.ndarray:
        """``(n, 2)`` float32 standardised (confidence, variability)."""
        losses = signals.losses
        n = losses.shape[0]
        coordinates = np.empty((n, 2), dtype=np.float32)
        for lo in range(0, n, _CHUNK_ROWS):
            probability = np.exp(-np.asarray(losses[lo : lo + _CHUNK_ROWS], dtype=np.float64))
            coordinates[lo : lo + len(probability), 0] = probability.mean(axis=1)
            coordinates[lo : lo + len(probability), 1] = probability.std(axis=1)
        self.coordinates_ = coordinates
        if n == 0:
            return coordinates.copy()
        mean = coordinates.mean(axis=0, dtype=np.float64)
        sd = coordinates.std(axis=0, dtype=np.float64)
        scale = np.divide(1.0, sd, out=np.zeros(2), where=sd > 1e-12)
        return ((coordinates - mean) * scale).astype(np.float32)


def _project(losses: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``(n, d)`` float32 ``(losses - mean) @ projection``, computed in row chunks."""
    n = losses.shape[0]
    out = np.empty((n, projection.shape[1]), dtype=np.float32)
    for lo in range(0, n, _CHUNK_ROWS):
        block = np.asarray(losses[lo : lo + _CHUNK_ROWS], dtype=np.float64) - mean
        out[lo : lo + len(block)] = block @ projection
    return out


def _check_share(selector: str, setting: str, value: object, *, upper_open: bool) -> None:
    """S2LError unless ``value`` is a real number in ``[0, 1)`` or ``[0, 1]``."""
    interval = "[0, 1)" if upper_open else "[0, 1]"
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and 0.0 <= float(value) <= 1.0
        and not (upper_open and float(value) == 1.0)
    )
    if not ok:
        raise S2LError(
            f"{selector} setting {setting} must be a number in {interval}, got {value!r}"
        )
