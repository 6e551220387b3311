"""Baseline selectors that S2L is compared against (the paper's baselines).

* ``random``: uniform random; ``random-balanced``: uniform random inside each source, the
  budget water-filled over sources (:class:`~smalltolarge.selection.stratified.Stratified`).
* Score rankings read one number per example and keep the ``budget`` best, ties to the smaller
  row index (a stable sort), so they are deterministic: they accept ``seed`` and ignore it.

  - ``length``: the longest responses (``Signals.lengths``);
  - ``least-confidence``: the highest loss at the final proxy checkpoint;
  - ``middle-perplexity``: the band of ``budget`` examples centred on the median final loss
    (perplexity ``exp(loss)`` is monotone in the loss, so the band is the same);
  - ``high-learnability``: the largest drop of loss from an early to a late checkpoint;
  - ``high-variability``: the largest standard deviation of the loss over checkpoints (the
    "variability" of dataset cartography).

* ``kmeans-embeddings``: S2L with the proxy's embeddings in place of its loss trajectories:
  k-means on ``Signals.embeddings``, then the same cluster-balanced sampling.
* ``facility-location`` lives in :mod:`smalltolarge.selection.facility`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import Selector, Signals
from smalltolarge.selection.s2l import S2LSelector
from smalltolarge.selection.stratified import Stratified

# Rows scored per step, so that a memory-mapped loss matrix is never copied as a whole.
_CHUNK_ROWS = 1_000_000


class RandomSelector(Selector):
    """Uniform random selection without replacement (the standard baseline)."""

    name = "random"

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Draw ``budget`` of the ``n`` examples uniformly without replacement."""
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(signals.n, size=budget, replace=False)).astype(np.int64)


class BalancedRandomSelector(Stratified):
    """Uniform random selection inside each source, the budget water-filled over sources.

    The same as ``Stratified(RandomSelector())``, registered under its own name so that it can
    be asked for as a method. Attributes are those of
    :class:`~smalltolarge.selection.stratified.Stratified` (``quotas_``, ``source_sizes_``,
    ``selectors_``).
    """

    name = "random-balanced"

    def __init__(self) -> None:
        super().__init__(RandomSelector())

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Select ``budget`` examples of ``signals``, uniformly within each source."""
        if signals.sources is None:
            raise S2LError(
                "random-balanced selection needs the source of every example "
                "(Signals.sources), but the pool has no source column"
            )
        return super()._select(signals, budget, seed)


class _ScoreRanking(Selector):
    """Keep the ``budget`` examples of largest score, ties to the smaller row index.

    Subclasses set ``name`` and implement :meth:`scores`.

    Attributes (set by :meth:`select`):
        scores_: ``(n,)`` float64 score of each example.
    """

    name = ""

    def scores(self, signals: Signals) -> np.ndarray:
        """``(n,)`` float64 score of each example; larger is selected first."""
        raise NotImplementedError

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """The ``budget`` examples of largest score; ``seed`` is unused (deterministic)."""
        scores = self.scores(signals)
        self.scores_ = scores
        # Negating keeps the sort stable in row order among equal scores (largest first).
        order = np.argsort(-scores, kind="stable")
        return np.sort(order[:budget]).astype(np.int64, copy=False)


class LengthSelector(_ScoreRanking):
    """The examples with the longest responses (most response tokens)."""

    name = "length"

    def scores(self, signals: Signals) -> np.ndarray:
        """Response-token count of each example (``signals.lengths``)."""
        if signals.lengths is None:
            raise S2LError(
                "length selection needs the response length of every example "
                "(Signals.lengths), but none were given"
            )
        lengths = np.asarray(signals.lengths)
        if not np.issubdtype(lengths.dtype, np.number):
            raise S2LError(f"response lengths must be numbers, got dtype {lengths.dtype}")
        lengths = lengths.astype(np.float64)
        if not np.isfinite(lengths).all():
            raise S2LError("response lengths must be finite numbers")
        return lengths


class LeastConfidenceSelector(_ScoreRanking):
    """The examples the final proxy is least confident on: the highest final-checkpoint loss."""

    name = "least-confidence"

    def scores(self, signals: Signals) -> np.ndarray:
        """Loss at the last checkpoint, ``losses[:, -1]``."""
        return _row_scores(signals.losses, lambda chunk: chunk[:, -1])


class HighLearnabilitySelector(_ScoreRanking):
    """The examples the proxy learned most: largest ``losses[:, early] - losses[:, late]``.

    Args:
        early: checkpoint index of the early loss (negative counts from the end).
        late: checkpoint index of the late loss; must name another checkpoint than ``early``.
    """

    name = "high-learnability"

    def __init__(self, early: int = 0, late: int = -1) -> None:
        self.early = early
        self.late = late

    def scores(self, signals: Signals) -> np.ndarray:
        """Early minus late loss of each example."""
        n_checkpoints = signals.losses.shape[1]
        early = _checkpoint("early", self.early, n_checkpoints)
        late = _checkpoint("late", self.late, n_checkpoints)
        if early == late:
            raise S2LError(
                f"high-learnability needs two different checkpoints, but early={self.early!r} "
                f"and late={self.late!r} both name checkpoint {early} of {n_checkpoints}"
            )
        # In float64: rounding a float32 difference could tie examples whose drops differ.
        return _row_scores(
            signals.losses, lambda chunk: chunk[:, early].astype(np.float64) - chunk[:, late]
        )


class HighVariabilitySelector(_ScoreRanking):
    """The examples whose loss varies most over training (dataset-cartography variability).

    The score is the population standard deviation (``ddof=0``) of each loss trajectory over
    the checkpoints.
    """

    name = "high-variability"

    def scores(self, signals: Signals) -> np.ndarray:
        """Standard deviation of each trajectory over the checkpoints."""
        if signals.losses.shape[1] < 2:
            raise S2LError(
                "high-variability needs loss trajectories of at least 2 checkpoints, got 1"
            )
        return _row_scores(signals.losses, lambda chunk: chunk.std(axis=1, dtype=np.float64))


class MiddlePerplexitySelector(Selector):
    """The ``budget`` examples of middle final perplexity, centred on the median.

    Examples are sorted by final-checkpoint loss (ties by row index); with ``n`` examples the
    band starts at rank ``(n - budget) // 2``, so when the excess is odd the band leans to the
    lower losses by one. Deterministic: ``seed`` is checked but unused.

    Attributes (set by :meth:`select`):
        scores_: ``(n,)`` float64 final-checkpoint loss of each example.
        band_: ``(low, high)`` final losses of the band's ends (None when the band is empty).
    """

    name = "middle-perplexity"

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """The ``budget`` examples around the median final loss; ``seed`` is unused."""
        final = _row_scores(signals.losses, lambda chunk: chunk[:, -1])
        order = np.argsort(final, kind="stable")
        start = (signals.n - budget) // 2
        band = order[start : start + budget]
        self.scores_ = final
        self.band_ = (float(final[band[0]]), float(final[band[-1]])) if budget else None
        return np.sort(band).astype(np.int64, copy=False)


class KMeansEmbeddingsSelector(S2LSelector):
    """S2L on proxy embeddings: k-means on ``signals.embeddings``, cluster-balanced sampling.

    The paper's ablation that clusters the proxy's representations instead of its loss
    trajectories. Embeddings are clustered as given (Euclidean, no normalisation), as S2L
    clusters raw trajectories.

    Args and attributes: those of :class:`~smalltolarge.selection.s2l.S2LSelector` (``K`` is
    reduced to ``K_eff`` on small pools the same way); ``centroids_`` are ``(K_eff, d)``.
    """

    name = "kmeans-embeddings"
    _what = "embeddings"

    def _features(self, signals: Signals) -> np.ndarray:
        embeddings = signals.embeddings
        if embeddings is None:
            raise S2LError(
                "kmeans-embeddings selection needs proxy embeddings (Signals.embeddings), "
                "but none were given"
            )
        if not np.issubdtype(embeddings.dtype, np.number):
            raise S2LError(f"embeddings must be numeric, got dtype {embeddings.dtype}")
        if not np.isfinite(embeddings).all():
            row = int(np.argmin(np.isfinite(embeddings).all(axis=1)))
            raise S2LError(f"embedding of row {row} is not finite")
        return embeddings


def _row_scores(losses: np.ndarray, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``(n,)`` float64 ``score(chunk)`` over row chunks of ``losses`` (a memmap stays one)."""
    out = np.empty(losses.shape[0], dtype=np.float64)
    for lo in range(0, losses.shape[0], _CHUNK_ROWS):
        out[lo : lo + _CHUNK_ROWS] = score(np.asarray(losses[lo : lo + _CHUNK_ROWS]))
    return out


def _checkpoint(setting: str, index: int, n_checkpoints: int) -> int:
    """``index`` as a checkpoint in ``[0, n_checkpoints)``; negative counts from the end."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise S2LError(f"high-learnability setting {setting} must be an int, got {index!r}")
    if not -n_checkpoints <= index < n_checkpoints:
        raise S2LError(
            f"high-learnability setting {setting}={index} is not a checkpoint: the trajectories "
            f"have {n_checkpoints} (valid: {-n_checkpoints} to {n_checkpoints - 1})"
        )
    return int(index) % n_checkpoints
