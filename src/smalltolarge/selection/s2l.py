"""S2L: cluster the proxy's loss trajectories, then sample evenly across the clusters.

Examples whose losses evolve alike during the small proxy's training are interchangeable for
the large model, so S2L clusters the raw trajectories with k-means (Euclidean, no scaling) and
fills the budget by water-filling over clusters, smallest first: rare learning dynamics are
kept whole and abundant ones are subsampled uniformly.

k-means is trained on a uniform sample of at most 256 trajectories per centroid (the faiss
default), then every trajectory is assigned to its nearest centroid in fixed-size chunks, so a
memory-mapped matrix of 10^7 rows is never copied into memory as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.selection.base import (
    Selector,
    Signals,
    balanced_sample,
    check_seed,
    cluster_summary,
)

BACKENDS = ("faiss", "sklearn")

# k-means trains on at most this many points per centroid (faiss's own default cap).
MAX_POINTS_PER_CENTROID = 256

# Rows assigned to centroids per step; bounds the temporaries to a few tens of MB.
_ASSIGN_CHUNK_ROWS = 1_000_000

# Maps a float32 chunk (m, d) to the (m,) index of each row's nearest centroid.
Assigner = Callable[[np.ndarray], np.ndarray]


class S2LSelector(Selector):
    """SmallToLarge selection: k-means on loss trajectories plus cluster-balanced sampling.

    Args:
        n_clusters: number of k-means clusters ``K`` asked for.
        n_iter: k-means iterations.
        backend: ``"faiss"`` (default, fast) or ``"sklearn"``.
        min_rows_per_cluster: the effective number of clusters is
            ``K_eff = max(1, min(K, n // min_rows_per_cluster))``, so that clusters hold at
            least this many rows on average. Clusters of one or two rows carry no information
            about a learning dynamic, and k-means with ``K >= n`` makes every row its own
            cluster, which turns the selection into a uniform draw. 1 keeps ``min(K, n)``.
        outlier_max_size: clusters of at most this many rows are set aside and only fill the
            budget that the other clusters cannot (the public reference code uses 2; 0 = off).

    Attributes (set by :meth:`select`):
        labels_: ``(n,)`` int64 cluster of each example.
        centroids_: ``(K_eff, T)`` float32 cluster centres.
        cluster_sizes_: ``(K_eff,)`` int64 examples per cluster.
        cluster_taken_: ``(K_eff,)`` int64 examples selected per cluster.
        n_clusters_: the effective number of clusters ``K_eff``.
        warnings_: plain-words notes on a clustering that cannot carry much information
            (``K`` reduced, constant trajectories, empty clusters, clusters of one or two rows).
    """

    name = "s2l"

    def __init__(
        self,
        n_clusters: int = 100,
        n_iter: int = 20,
        backend: str = "faiss",
        min_rows_per_cluster: int = 10,
        outlier_max_size: int = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_iter = n_iter
        self.backend = backend
        self.min_rows_per_cluster = min_rows_per_cluster
        self.outlier_max_size = outlier_max_size

    def _select(self, signals: Signals, budget: int, seed: int) -> np.ndarray:
        """Cluster ``signals.losses`` ``(n, T)`` and draw ``budget`` examples balanced over the
        clusters; ``seed`` fixes both the clustering and the draws."""
        features = self._features(signals)
        n = signals.n
        if n == 0:
            raise S2LError(f"cannot cluster an empty pool: there are no {self._what}")
        k = effective_clusters(int(self.n_clusters), n, int(self.min_rows_per_cluster))
        # Independent streams for the k-means training sample and for the per-cluster draws.
        training_seed, draw_seed = np.random.SeedSequence(seed).spawn(2)
        labels, centroids = kmeans_labels(
            features, k, self.n_iter, seed, backend=self.backend, sample_seed=training_seed
        )
        rng = np.random.default_rng(draw_seed)
        quotas = None
        self.targeted_ = None
        if signals.target_losses is not None:
            quotas = self._targeted(signals, labels, centroids, k, budget, rng)
        selected = balanced_sample(
            labels, budget, rng, outlier_max_size=int(self.outlier_max_size), quotas=quotas
        )

        self.labels_ = labels
        self.centroids_ = centroids
        self.n_clusters_ = k
        self.cluster_sizes_ = np.bincount(labels, minlength=k).astype(np.int64)
        self.cluster_taken_ = np.bincount(labels[selected], minlength=k).astype(np.int64)
        self.warnings_ = self._clustering_warnings(features, n)
        return selected

    def _targeted(self, signals, labels, centroids, k, budget, rng) -> np.ndarray:
        """Quotas shifted toward the clusters the target trajectories fall in, by
        ``signals.target_weight`` (see :mod:`smalltolarge.selection.targeted`)."""
        from smalltolarge.selection.targeted import assign_to_centroids, targeted_quotas

        if type(self)._features is not S2LSelector._features:
            raise S2LError(f"a target set works with s2l's own trajectories, not {self.name}")
        if self.outlier_max_size:
            raise S2LError("a target set cannot be combined with outlier_max_size")
        sizes = np.bincount(labels, minlength=k)
        target_labels = assign_to_centroids(signals.target_losses, centroids)
        share = np.bincount(target_labels, minlength=k) / len(target_labels)
        weight = float(signals.target_weight)
        plain, quotas = targeted_quotas(sizes, budget, share, weight, rng)
        order = np.argsort(sizes, kind="stable")  # as cluster_summary orders its lists
        self.targeted_ = {
            "target_weight": weight,
            "n_target": int(len(target_labels)),
            "target_share": [round(float(x), 6) for x in share[order]],
            "quotas_plain": [int(q) for q in plain[order]],
            "quotas_targeted": [int(q) for q in quotas[order]],
            "moved": int(np.abs(quotas - plain).sum() // 2),
        }
        return quotas

    def summary_(self) -> dict[str, Any]:
        """``clusters``, ``n_clusters_effective`` (``K_eff``), ``n_clusters_requested`` (``K``)
        and ``warnings`` of the fitted clustering; with a target set, ``targeted``: the target
        share, plain and targeted quotas of each cluster (ordered as ``clusters``) and how many
        rows moved."""
        return {
            "clusters": cluster_summary(self.cluster_sizes_, self.cluster_taken_),
            "n_clusters_effective": int(self.n_clusters_),
            "n_clusters_requested": int(self.n_clusters),
            "warnings": list(self.warnings_),
            **({"targeted": self.targeted_} if getattr(self, "targeted_", None) else {}),
        }

    #: what :meth:`_features` clusters, for messages
    _what = "loss trajectories"

    def _features(self, signals: Signals) -> np.ndarray:
        """The matrix to cluster: the loss trajectories (a subclass may cluster another)."""
        return signals.losses

    def _clustering_warnings(self, features: np.ndarray, n: int) -> list[str]:
        """Plain-words notes on a clustering that carries little information."""
        notes = []
        asked, k = int(self.n_clusters), self.n_clusters_
        if k < asked:
            notes.append(
                f"K reduced from {asked} to {k}: {n} rows"
                + (
                    f", at least {self.min_rows_per_cluster} per cluster on average"
                    if self.min_rows_per_cluster > 1
                    else ""
                )
            )
        if n > 1 and _all_rows_equal(features):
            notes.append(
                f"all {n} {self._what} are identical: the clustering carries no information "
                "and the selection is a uniform random draw"
            )
        sizes = self.cluster_sizes_
        empty = int((sizes == 0).sum())
        if empty:
            notes.append(f"{empty} of {k} clusters are empty (k-means found fewer groups)")
        filled = sizes[sizes > 0]
        if len(filled) > 1 and np.median(filled) <= 2:
            notes.append(
                f"most clusters hold one or two rows (median {np.median(filled):g} of "
                f"{len(filled)} clusters): the selection hardly depends on the {self._what}"
            )
        return notes

    def check_settings(self) -> None:
        """Raise S2LError for a setting out of range (K, iterations, backend, ...)."""
        self._check_ints("n_clusters", "n_iter", "min_rows_per_cluster")
        self._check_ints("outlier_max_size", minimum=0)
        if self.backend not in BACKENDS:
            raise S2LError(
                f"unknown k-means backend {self.backend!r}; known: {', '.join(BACKENDS)}"
            )


def effective_clusters(n_clusters: int, n: int, min_rows_per_cluster: int = 10) -> int:
    """``K_eff = max(1, min(K, n // min_rows_per_cluster))``: the clusters ``n`` rows can fill.

    S2L's K (100 in the paper) is sized for pools of tens of thousands of rows. On a small pool
    or a small source, the same K leaves clusters of one or two rows, and k-means with
    ``K >= n`` makes every row its own cluster; either way the balanced draw no longer depends
    on the trajectories. Capping K at one cluster per ``min_rows_per_cluster`` rows keeps every
    cluster a group.
    """
    return max(1, min(n_clusters, n // min_rows_per_cluster, n))


def _all_rows_equal(x: np.ndarray) -> bool:
    """True when every row of ``x`` equals the first (read in chunks: ``x`` may be a memmap)."""
    first = np.asarray(x[:1])
    return all(
        bool((np.asarray(x[i : i + _ASSIGN_CHUNK_ROWS]) == first).all())
        for i in range(0, x.shape[0], _ASSIGN_CHUNK_ROWS)
    )


def kmeans_labels(
    x: np.ndarray,
    n_clusters: int,
    n_iter: int,
    seed: int,
    backend: str = "faiss",
    *,
    sample_seed: int | np.random.SeedSequence | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Euclidean) of the rows of ``x``: train on a sample, assign every row.

    Training uses a uniform sample of at most ``256 * n_clusters`` rows; assignment to the
    nearest centroid runs over all rows in chunks, so ``x`` may be a memory map that is never
    copied as a whole.

    Args:
        x: ``(n, d)`` points (float32 preferred; other dtypes are converted chunk by chunk).
        n_clusters: ``K``, ``1 <= K <= n``.
        n_iter: Lloyd iterations, ``>= 1``.
        seed: non-negative int seed of the k-means initialisation.
        backend: ``"faiss"`` or ``"sklearn"``.
        sample_seed: seed of the training-sample draw (default ``seed``).

    Returns:
        ``labels`` ``(n,)`` int64 in ``[0, K)`` and ``centroids`` ``(K, d)`` float32.
    """
    if backend not in BACKENDS:
        raise S2LError(f"unknown k-means backend {backend!r}; known: {', '.join(BACKENDS)}")
    if x.ndim != 2:
        raise S2LError(f"k-means needs a 2-D (n, d) matrix, got shape {x.shape}")
    n, d = x.shape
    if isinstance(n_clusters, bool) or not 1 <= int(n_clusters) <= n:
        raise S2LError(f"number of clusters must be between 1 and {n} (the pool), got {n_clusters}")
    if isinstance(n_iter, bool) or int(n_iter) < 1:
        raise S2LError(f"number of k-means iterations must be at least 1, got {n_iter}")
    n_clusters, n_iter, seed = int(n_clusters), int(n_iter), check_seed(seed)

    train = _training_sample(
        x, MAX_POINTS_PER_CENTROID * n_clusters, seed if sample_seed is None else sample_seed
    )
    if backend == "faiss":
        centroids, assign = _fit_faiss(train, n_clusters, n_iter, seed)
    else:
        centroids, assign = _fit_sklearn(train, n_clusters, n_iter, seed)

    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ASSIGN_CHUNK_ROWS):
        # A slice of a float32 C-ordered memmap is already contiguous: no copy is made here.
        chunk = np.ascontiguousarray(x[start : start + _ASSIGN_CHUNK_ROWS], dtype=np.float32)
        labels[start : start + len(chunk)] = assign(chunk)
    return labels, centroids


def _fit_faiss(train: np.ndarray, k: int, n_iter: int, seed: int) -> tuple[np.ndarray, Assigner]:
    """faiss k-means on ``train`` ``(m, d)``: centroids ``(k, d)`` and a chunk assigner."""
    import faiss

    d = train.shape[1]
    kmeans = faiss.Kmeans(
        d,
        k,
        niter=n_iter,
        seed=seed % 2**31,  # faiss stores the seed in a C int
        verbose=False,
        # The sample is already capped, and small pools (n close to K) are legitimate here, so
        # neither faiss's resampling nor its "too few points" warning should kick in.
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=1,
    )
    kmeans.train(train)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(d)
    index.add(centroids)

    def assign(chunk: np.ndarray) -> np.ndarray:
        return index.search(chunk, 1)[1][:, 0]

    return centroids, assign


def _fit_sklearn(train: np.ndarray, k: int, n_iter: int, seed: int) -> tuple[np.ndarray, Assigner]:
    """scikit-learn k-means on ``train`` ``(m, d)``: centroids ``(k, d)`` and a chunk assigner."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=k, n_init=1, max_iter=n_iter, random_state=seed % 2**32)
    kmeans.fit(train)
    centroids = np.ascontiguousarray(kmeans.cluster_centers_, dtype=np.float32)
    return centroids, kmeans.predict


def _training_sample(
    x: np.ndarray, max_rows: int, seed: int | np.random.SeedSequence
) -> np.ndarray:
    """``(min(n, max_rows), d)`` float32 rows of ``x``, a uniform sample when ``n > max_rows``."""
    n = x.shape[0]
    if n <= max_rows:
        return np.ascontiguousarray(x, dtype=np.float32)
    rows = np.random.default_rng(seed).choice(n, size=max_rows, replace=False)
    # Ascending rows read a memory map front to back instead of seeking at random.
    return np.ascontiguousarray(x[np.sort(rows)], dtype=np.float32)
