"""Three selectors from the data-selection literature, built on S2L's trajectory clusters.

* ``s2l-checked`` (:class:`TargetCheckedS2LSelector`), after STAFF (Zhang et al., "Speculative
  Coreset Selection for Task-Specific Fine-tuning", arXiv 2410.01296). STAFF scores the data
  with a small model of the target's family and then *verifies* those scores with the target
  itself on a few examples per region, giving each region a budget that grows with how much
  the target still has to learn there. Here the regions are S2L's trajectory clusters and the
  verification is the target's probe (``s2l probe``): the untrained target's mean response
  loss on a per-source sample of the pool (:attr:`Signals.target_probe`). For each cluster
  ``c`` with probed members ``P_c``

      ratio_c = mean(target_probe[P_c]) / max(mean(losses[P_c, -1]), 1e-6),

  the target's loss relative to the final proxy's on the *same* examples (a paired
  comparison: the sample's own difficulty cancels). A cluster without a probed member takes
  the ratio of the nearest cluster centroid that has one. The clusters' shares
  ``ratio / sum(ratio)`` replace the target set's shares of targeted S2L
  (:func:`~smalltolarge.selection.targeted.targeted_quotas`), mixed with S2L's equal
  water-filling quotas by ``check_weight`` (0: plain S2L, 1: fully target-checked); rows are
  drawn uniformly within each cluster, as S2L does. A cluster the target already knows (low
  probe loss for the proxy's loss) gives up budget to the clusters it does not. Probing only
  reads the target's loss: no probed example is trained on unless it is selected, so the
  probe does not count against the budget.

* ``s2l-cut`` (:class:`TailCutS2LSelector`), after CCS (Zheng et al., "Coverage-centric
  Coreset Selection for High Pruning Rates", arXiv 2210.15809). CCS prunes the hardest
  examples (often mislabelled or unlearnable) before sampling for coverage. Here the
  examples the proxy never learns — the ``cut_fraction`` of highest final-checkpoint loss,
  a rule fixed in advance — are dropped before clustering, and S2L runs on the rest. Inside
  the :class:`~smalltolarge.selection.stratified.Stratified` wrapper the cut is therefore
  made per source.

* ``kmq`` (:class:`KMQSelector`), after kMQ (Yu et al., "Diversify and Conquer:
  Diversity-Centric Data Selection with Iterative Refinement", arXiv 2409.11378): k-means
  clusters, each cluster's budget proportional to its size (diversity first: every region of
  the data is represented as it occurs), and within a cluster a draw weighted by quality.
  kMQ scores quality with a reward model; here it is read off the trajectory: the proxy's
  relative loss drop ``q = max(0, (L_first - L_last) / L_first)`` (what the proxy learned
  from the example; 0 when it learned nothing), drawn with weight ``q + 1e-3`` so that every
  example can still be picked.

Every random choice derives from the ``seed`` of :meth:`~smalltolarge.selection.base.Selector.
select`, split as S2L splits it (k-means training sample, then the draws), so a selection is
reproducible bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import (
    Selector,
    Signals,
    _rows_by_label,
    balanced_sample,
    cluster_summary,
)
from smalltolarge.selection.s2l import (
    BACKENDS,
    S2LSelector,
    effective_clusters,
    kmeans_labels,
)
from smalltolarge.selection.shape import _check_share
from smalltolarge.selection.targeted import (
    assign_to_centroids,
    proportional_quotas,
    targeted_quotas,
)

# A cluster's mean proxy loss is floored at this (nats) in the target/proxy ratio.
_MIN_PROXY_LOSS = 1e-6

# kMQ's draw weight is quality plus this, so an example of quality 0 can still be drawn.
_QUALITY_FLOOR = 1e-3

# Rows read per step from a (possibly memory-mapped) loss matrix.
_CHUNK_ROWS = 1_000_000

# The command that writes the probe, for messages.
_PROBE_COMMAND = "s2l probe --run-dir RUN --target MODEL"


class TargetCheckedS2LSelector(S2LSelector):
    """S2L whose cluster quotas grow with what the target still has to learn there (STAFF).

    The clusters are S2L's (same ``K_eff``, same seed split, same k-means); the quotas mix
    S2L's equal water-filling quotas with a split of the budget in proportion to each
    cluster's target/proxy loss ratio (see the module docstring), by ``check_weight``.

    Args:
        n_clusters: number of k-means clusters ``K`` asked for (see
            :class:`~smalltolarge.selection.s2l.S2LSelector`).
        n_iter: k-means iterations.
        backend: ``"faiss"`` (default) or ``"sklearn"``.
        min_rows_per_cluster: ``K_eff = max(1, min(K, n // min_rows_per_cluster))``.
        check_weight: float in ``[0, 1]``: 0 gives plain S2L's quotas (and, for a seed, plain
            S2L's selection), 1 quotas fully in proportion to the ratios (as far as the
            clusters hold enough rows).

    Clusters of one or two rows are not set aside (``outlier_max_size`` is fixed at 0): a
    cluster's ratio decides its quota.

    Attributes (set by :meth:`select`): those of
    :class:`~smalltolarge.selection.s2l.S2LSelector`, and
        ratios_: ``(K_eff,)`` float64 target/proxy loss ratio of each cluster (borrowed from
            the nearest probed centroid for a cluster without a probed member).
        target_check_: the ``target_check`` entry of :meth:`summary_`.

    Raises (from :meth:`select`):
        S2LError: when ``signals.target_probe`` is None or holds no finite value, or when a
            target set (``signals.target_losses``) is given: its quotas come from the probe.
    """

    name = "s2l-checked"
    #: reads :attr:`Signals.target_probe` (see :func:`~smalltolarge.selection.base.needs_probe`)
    needs_probe = True

    def __init__(
        self,
        n_clusters: int = 100,
        n_iter: int = 20,
        backend: str = "faiss",
        min_rows_per_cluster: int = 10,
        check_weight: float = 1.0,
    ) -> None:
        # outlier_max_size is S2L's attribute, not a setting here: always 0.
        super().__init__(n_clusters, n_iter, backend, min_rows_per_cluster, outlier_max_size=0)
        self.check_weight = check_weight

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of range (S2L's and ``check_weight``)."""
        super().check_settings()
        _check_share(self.name, "check_weight", self.check_weight, upper_open=False)

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Cluster as S2L, size each cluster's quota by its target/proxy ratio, draw."""
        if signals.n == 0:
            raise S2LError(f"cannot cluster an empty pool: there are no {self._what}")
        probe = signals.target_probe
        if probe is None:
            raise S2LError(
                f"method {self.name} needs the target's probe losses (Signals.target_probe): "
                f"run `{_PROBE_COMMAND}` first (MODEL: the model you will fine-tune)"
            )
        probe = np.asarray(probe, dtype=np.float64)
        probed = np.isfinite(probe)
        notes = []
        if not probed.any():
            # e.g. a source whose only probed prompt did not fit the target's max_length:
            # its quotas stay S2L's rather than failing the whole (per-source) selection
            notes.append(
                f"none of these {signals.n} examples has a probe loss (a probed prompt that "
                "does not fit the target's max_length has none): plain S2L quotas here; run "
                f"`{_PROBE_COMMAND}` on a larger sample to check them"
            )
        if signals.target_losses is not None:
            raise S2LError(
                f"method {self.name} takes its cluster quotas from the target's probe; it does "
                "not combine with a target set (use s2l with a target set, or drop it)"
            )
        features = self._features(signals)
        labels, centroids, k, draw_seed = _cluster(self, features, seed)
        n = signals.n
        sizes = np.bincount(labels, minlength=k).astype(np.int64)
        final = _last_checkpoint(signals.losses)
        if probed.any():
            ratios, counts = _cluster_ratios(labels, centroids, probe, final, probed, k)
        else:
            ratios, counts = np.ones(k), np.zeros(k, dtype=np.int64)

        weight = float(self.check_weight) if probed.any() else 0.0
        total = float(ratios.sum())
        if total > 0:
            share = ratios / total
        else:  # the target's probe loss is 0 on every probed example: nothing to check
            share = np.zeros(k)
            weight = 0.0
            notes.append(
                "the target's probe loss is 0 on every probed example: the quotas are plain S2L's"
            )
        # Clusters after the last non-empty one are left out of the quota split, so that the
        # random order among equal-size clusters is drawn exactly as plain S2L draws it (and
        # check_weight 0 reproduces S2L's selection for a seed); they get no row either way.
        used = int(labels.max()) + 1
        rng = np.random.default_rng(draw_seed)
        plain = np.zeros(k, dtype=np.int64)
        quotas = np.zeros(k, dtype=np.int64)
        plain[:used], quotas[:used] = targeted_quotas(
            sizes[:used], budget, share[:used], weight, rng
        )
        selected = balanced_sample(labels, budget, rng, quotas=quotas[:used])

        self.labels_ = labels
        self.centroids_ = centroids
        self.n_clusters_ = k
        self.cluster_sizes_ = sizes
        self.cluster_taken_ = np.bincount(labels[selected], minlength=k).astype(np.int64)
        self.ratios_ = ratios
        self.targeted_ = None
        self.warnings_ = self._clustering_warnings(features, n) + notes

        non_empty = int((sizes > 0).sum())
        clusters_probed = int((counts > 0).sum())
        if probed.any() and clusters_probed < non_empty / 2:
            self.warnings_.append(
                f"only {clusters_probed} of {non_empty} clusters hold a probed example: the "
                "others take the target/proxy ratio of the nearest probed cluster; probe a "
                "larger sample (s2l probe --fraction)"
            )
        order = np.argsort(sizes, kind="stable")  # as cluster_summary orders its lists
        self.target_check_ = {
            "check_weight": float(self.check_weight),
            "n_probed": int(probed.sum()),
            "clusters_probed": clusters_probed,
            "n_clusters": int(k),
            "ratio": [round(float(r), 6) for r in ratios[order]],
            "quotas_plain": [int(q) for q in plain[order]],
            "quotas_checked": [int(q) for q in quotas[order]],
            "moved": int(np.abs(quotas - plain).sum() // 2),
            "probe_counts_against_budget": False,
        }
        return selected

    def summary_(self) -> dict[str, Any]:
        """S2L's summary and ``target_check``: the weight, how many rows and clusters were
        probed, each cluster's ratio and plain and checked quotas (ordered as ``clusters``),
        how many rows moved, and that the probe does not count against the budget."""
        return {**super().summary_(), "target_check": self.target_check_}


class TailCutS2LSelector(S2LSelector):
    """S2L after cutting the examples the proxy never learns (CCS's hard-example pruning).

    The ``n_cut = floor(cut_fraction * n)`` examples of highest final-checkpoint loss
    (``losses[:, -1]``; among equal losses the smaller row is cut first) are dropped, but never
    so many that fewer than ``budget`` rows are left: the cut then shrinks to ``n - budget``
    and a warning says so. S2L runs on the kept rows with the same seed.

    Args:
        n_clusters, n_iter, backend, min_rows_per_cluster, outlier_max_size: as for
            :class:`~smalltolarge.selection.s2l.S2LSelector` (same defaults); ``K_eff`` is
            computed from the kept rows.
        cut_fraction: float in ``[0, 1)``, the share of the pool cut (0: plain S2L).

    Attributes (set by :meth:`select`): those of
    :class:`~smalltolarge.selection.s2l.S2LSelector`, where
        labels_: ``(n,)`` int64 over all rows: a kept row's S2L cluster, ``K_eff`` (one extra
            group) for a cut row;
        cluster_sizes_, cluster_taken_, centroids_: describe the kept rows' ``K_eff``
            clusters only (the cut rows are in none of them);
    and
        cut_rows_: sorted int64 rows cut.
        tail_cut_: the ``tail_cut`` entry of :meth:`summary_`.
    """

    name = "s2l-cut"

    def __init__(
        self,
        n_clusters: int = 100,
        n_iter: int = 20,
        backend: str = "faiss",
        min_rows_per_cluster: int = 10,
        outlier_max_size: int = 0,
        cut_fraction: float = 0.1,
    ) -> None:
        super().__init__(n_clusters, n_iter, backend, min_rows_per_cluster, outlier_max_size)
        self.cut_fraction = cut_fraction

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of range (S2L's and ``cut_fraction``)."""
        super().check_settings()
        _check_share(self.name, "cut_fraction", self.cut_fraction, upper_open=True)

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Cut the highest final losses, run S2L on the rest, map its rows back."""
        n = signals.n
        if n == 0:
            raise S2LError(f"cannot cluster an empty pool: there are no {self._what}")
        # The tolerance keeps a product such as 0.29 * 100 = 28.999... from losing a row.
        planned = math.floor(float(self.cut_fraction) * n + 1e-9)
        n_cut = min(planned, n - budget)
        final = _last_checkpoint(signals.losses)
        cut = np.sort(np.argsort(-final, kind="stable")[:n_cut]).astype(np.int64)
        kept = np.ones(n, dtype=bool)
        kept[cut] = False
        kept_rows = np.flatnonzero(kept)

        local = super()._select(signals.subset(kept_rows), budget, seed)
        selected = kept_rows[local].astype(np.int64, copy=False)
        labels = np.full(n, self.n_clusters_, dtype=np.int64)
        labels[kept_rows] = self.labels_
        self.labels_ = labels
        self.cut_rows_ = cut
        if n_cut < planned:
            self.warnings_.append(
                f"tail cut reduced from {planned} to {n_cut} rows so that the budget of "
                f"{budget} fits in the {n} rows"
            )
        self.tail_cut_ = {
            "cut_fraction": float(self.cut_fraction),
            "n_cut": int(n_cut),
            "n_kept": int(n - n_cut),
            "final_loss_threshold": float(final[cut].min()) if n_cut else None,
        }
        return selected

    def summary_(self) -> dict[str, Any]:
        """S2L's summary of the kept rows and ``tail_cut``: the fraction, rows cut and kept,
        and the smallest final loss among the cut rows (None when none was cut)."""
        return {**super().summary_(), "tail_cut": self.tail_cut_}


class KMQSelector(Selector):
    """k-means clusters, quotas proportional to cluster size, quality-weighted draws (kMQ).

    The loss trajectories are clustered as S2L clusters them (same ``K_eff``, same seed split,
    same k-means). Cluster ``c`` gets the share ``size_c / n`` of the budget
    (:func:`~smalltolarge.selection.targeted.proportional_quotas`: rounded down, the rest by
    largest remainder). Within a cluster exactly its quota is drawn without replacement with
    probabilities weighted by ``w = q + 1e-3``, where ``q = max(0, (L_first - L_last) /
    L_first)`` is the proxy's relative loss drop (0 when ``L_first <= 0``), by the
    Efraimidis-Spirakis method: each row gets the key ``log(u) / w`` with ``u`` uniform on
    ``(0, 1]`` and the rows of largest key are taken. With one checkpoint every ``q`` is 0 and
    the draw within clusters is uniform.

    Args:
        n_clusters: number of k-means clusters ``K`` asked for.
        n_iter: k-means iterations.
        backend: ``"faiss"`` (default) or ``"sklearn"``.
        min_rows_per_cluster: ``K_eff = max(1, min(K, n // min_rows_per_cluster))``.

    Attributes (set by :meth:`select`):
        labels_: ``(n,)`` int64 cluster of each example.
        centroids_: ``(K_eff, T)`` float32 cluster centres.
        n_clusters_: ``K_eff``.
        cluster_sizes_: ``(K_eff,)`` int64 examples per cluster.
        cluster_taken_: ``(K_eff,)`` int64 examples selected per cluster.
        quality_: ``(n,)`` float64 ``q`` of each example.
        warnings_: as S2L's, and a note when the draw within clusters is uniform.
    """

    name = "kmq"
    #: what is clustered, for messages
    _what = "loss trajectories"

    def __init__(
        self,
        n_clusters: int = 100,
        n_iter: int = 20,
        backend: str = "faiss",
        min_rows_per_cluster: int = 10,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.backend = backend
        self.min_rows_per_cluster = min_rows_per_cluster

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of range (K, iterations, backend, ...)."""
        self._check_ints("n_clusters", "n_iter", "min_rows_per_cluster")
        if self.backend not in BACKENDS:
            raise S2LError(
                f"unknown k-means backend {self.backend!r}; known: {', '.join(BACKENDS)}"
            )

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Cluster, split the budget by cluster size, draw each quota weighted by quality."""
        losses = signals.losses
        n = signals.n
        if n == 0:
            raise S2LError(f"cannot cluster an empty pool: there are no {self._what}")
        labels, centroids, k, draw_seed = _cluster(self, losses, seed)
        sizes = np.bincount(labels, minlength=k).astype(np.int64)
        quotas = proportional_quotas(sizes, budget, sizes / sizes.sum())
        quality = _loss_drop(losses)
        weights = quality + _QUALITY_FLOOR

        rng = np.random.default_rng(draw_seed)
        members = _rows_by_label(labels, sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        picked = [np.zeros(0, dtype=np.int64)]
        for label in np.flatnonzero(quotas):
            rows = members[starts[label] : starts[label + 1]].astype(np.int64)
            quota = int(quotas[label])
            if quota < len(rows):
                u = 1.0 - rng.random(len(rows))  # in (0, 1]: log(u) is finite
                keys = np.log(u) / weights[rows]
                rows = rows[np.argsort(-keys, kind="stable")[:quota]]
            picked.append(rows)
        selected = np.sort(np.concatenate(picked))

        self.labels_ = labels
        self.centroids_ = centroids
        self.n_clusters_ = k
        self.cluster_sizes_ = sizes
        self.cluster_taken_ = np.bincount(labels[selected], minlength=k).astype(np.int64)
        self.quality_ = quality
        # S2L's notes on the clustering apply as they are (they read the same attributes).
        self.warnings_ = S2LSelector._clustering_warnings(self, losses, n)  # type: ignore[arg-type]
        if losses.shape[1] == 1:
            self.warnings_.append(
                "the trajectories have one checkpoint, so no example has a loss drop: the draw "
                "within clusters is uniform"
            )
        self.quality_summary_ = {
            "definition": "max(0, (L_first - L_last) / L_first): the proxy's relative loss "
            "drop from the first to the last checkpoint; draw weight quality + 0.001",
            "mean_pool": round(float(quality.mean()), 6),
            "mean_subset": round(float(quality[selected].mean()), 6) if budget else None,
        }
        return selected

    def summary_(self) -> dict[str, Any]:
        """``clusters``, ``n_clusters_effective``, ``n_clusters_requested``, ``warnings`` and
        ``quality``: its definition and its mean over the pool and over the subset."""
        return {
            "clusters": cluster_summary(self.cluster_sizes_, self.cluster_taken_),
            "n_clusters_effective": int(self.n_clusters_),
            "n_clusters_requested": int(self.n_clusters),
            "warnings": list(self.warnings_),
            "quality": self.quality_summary_,
        }


def _cluster(
    selector: Selector, features: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, int, np.random.SeedSequence]:
    """S2L's clustering of ``features`` with ``selector``'s settings: labels, centroids,
    ``K_eff`` and the seed of the draws (the seed split exactly as S2L splits it)."""
    n = features.shape[0]
    if n == 0:
        raise S2LError("cannot cluster an empty pool: there are no loss trajectories")
    k = effective_clusters(int(selector.n_clusters), n, int(selector.min_rows_per_cluster))
    training_seed, draw_seed = np.random.SeedSequence(seed).spawn(2)
    labels, centroids = kmeans_labels(
        features, k, selector.n_iter, seed, backend=selector.backend, sample_seed=training_seed
    )
    return labels, centroids, k, draw_seed


def _cluster_ratios(
    labels: np.ndarray,
    centroids: np.ndarray,
    probe: np.ndarray,
    final: np.ndarray,
    probed: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(K,)`` target/proxy loss ratio of each cluster over its probed members, and
    ``(K,)`` probed members per cluster. A cluster without one takes the ratio of the
    nearest centroid (Euclidean) that has one (ties to the smaller cluster index)."""
    of = labels[probed]
    counts = np.bincount(of, minlength=k)
    target = np.bincount(of, weights=probe[probed], minlength=k)
    proxy = np.bincount(of, weights=final[probed], minlength=k)
    has = counts > 0
    ratios = np.zeros(k, dtype=np.float64)
    ratios[has] = (target[has] / counts[has]) / np.maximum(
        proxy[has] / counts[has], _MIN_PROXY_LOSS
    )
    if not has.all():
        donors = np.flatnonzero(has)
        nearest = assign_to_centroids(centroids[~has], centroids[donors])
        ratios[~has] = ratios[donors[nearest]]
    return ratios, counts


def _last_checkpoint(losses: np.ndarray) -> np.ndarray:
    """``(n,)`` float64 ``losses[:, -1]``, read in row chunks (a memmap is never copied)."""
    out = np.empty(losses.shape[0], dtype=np.float64)
    for lo in range(0, losses.shape[0], _CHUNK_ROWS):
        out[lo : lo + _CHUNK_ROWS] = np.asarray(losses[lo : lo + _CHUNK_ROWS, -1])
    return out


def _loss_drop(losses: np.ndarray) -> np.ndarray:
    """``(n,)`` float64 ``max(0, (L_first - L_last) / L_first)`` in ``[0, 1]`` (0 where
    ``L_first <= 0``), read in row chunks."""
    out = np.empty(losses.shape[0], dtype=np.float64)
    for lo in range(0, losses.shape[0], _CHUNK_ROWS):
        chunk = np.asarray(losses[lo : lo + _CHUNK_ROWS], dtype=np.float64)
        first, last = chunk[:, 0], chunk[:, -1]
        drop = np.divide(first - last, first, out=np.zeros(len(first)), where=first > 0)
        out[lo : lo + len(chunk)] = np.clip(drop, 0.0, 1.0)
    return out
