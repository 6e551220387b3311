"""Baseline selectors: the common contract, each method's defining order, missing signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.selection import (
    BASELINES,
    SELECTORS,
    BalancedRandomSelector,
    FacilityLocationSelector,
    HighLearnabilitySelector,
    KMeansEmbeddingsSelector,
    RandomSelector,
    Signals,
    Stratified,
    facility,
    make_selector,
    water_fill,
)

from .conftest import assert_valid_selection

# --------------------------------------------------------------------------------------------
# fixtures


def _signals(
    losses: np.ndarray,
    *,
    sources: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    target_probe: np.ndarray | None = None,
) -> Signals:
    losses = np.asarray(losses, dtype=np.float32)
    return Signals(
        losses=losses,
        ids=np.array([f"ex{i}" for i in range(len(losses))]),
        sources=sources,
        lengths=lengths,
        embeddings=embeddings,
        target_probe=target_probe,
    )


def _full_signals(n: int = 60, seed: int = 0) -> Signals:
    """Every signal present: 6-checkpoint losses, 3 sources, lengths, 8-d embeddings, and the
    target's probe losses of every other example (NaN for the others)."""
    rng = np.random.default_rng(seed)
    losses = rng.random((n, 6), dtype=np.float32) * 3
    sources = np.array(["alpaca", "dolly", "gsm8k"])[rng.integers(0, 3, n)]
    lengths = rng.integers(1, 500, n)
    embeddings = rng.standard_normal((n, 8), dtype=np.float32)
    probe = rng.random(n, dtype=np.float32) * 3  # drawn last: the other signals stay as they were
    probe[1::2] = np.nan
    return _signals(
        losses, sources=sources, lengths=lengths, embeddings=embeddings, target_probe=probe
    )


def _blobs(sizes: list[int], dim: int = 16, spread: float = 0.01, seed: int = 0):
    """Tight clusters around orthogonal unit centres (shuffled): embeddings and cluster ids."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(group)
    centres = np.eye(dim, dtype=np.float32)[: len(sizes)] * 5
    points = centres[group] + rng.normal(0, spread, (len(group), dim)).astype(np.float32)
    return points.astype(np.float32), group


# --------------------------------------------------------------------------------------------
# registry and the common contract


def test_registry_lists_every_baseline():
    assert BASELINES == [
        "random",
        "random-balanced",
        "length",
        "least-confidence",
        "middle-perplexity",
        "high-learnability",
        "high-variability",
        "facility-location",
        "kmeans-embeddings",
        "s2l-whitened",
        "s2l-shape",
        "s2l-cartography",
        "s2l-checked",
        "s2l-cut",
        "kmq",
    ]
    assert set(SELECTORS) == {"s2l", *BASELINES}
    for key in BASELINES:
        selector = make_selector(key, n_clusters=None)
        assert selector.name == key
        assert "0x" not in repr(selector), "settings text feeds a fingerprint: no addresses"


def test_make_selector_settings_of_baselines():
    learn = make_selector("high-learnability", early=1, late=None)
    assert isinstance(learn, HighLearnabilitySelector) and (learn.early, learn.late) == (1, -1)
    km = make_selector("kmeans-embeddings", n_clusters=7)
    assert isinstance(km, KMeansEmbeddingsSelector) and km.n_clusters == 7
    fl = make_selector("facility-location", n_neighbors=5, knn="exact")
    assert isinstance(fl, FacilityLocationSelector) and (fl.n_neighbors, fl.knn) == (5, "exact")
    balanced = make_selector("random-balanced")
    assert isinstance(balanced, BalancedRandomSelector) and isinstance(balanced, Stratified)
    assert isinstance(balanced.selector, RandomSelector)
    wrapped = make_selector("length", stratify=True)
    assert isinstance(wrapped, Stratified) and wrapped.name == "length"
    with pytest.raises(S2LError, match="n_clusters"):
        make_selector("length", n_clusters=5)
    with pytest.raises(S2LError, match="takes: no settings"):
        make_selector("random-balanced", early=2)


@pytest.mark.parametrize("method", BASELINES)
def test_selects_exactly_budget_and_is_deterministic(method):
    signals = _full_signals()
    n = signals.n
    for budget in (0, 1, 7, 30, n - 1, n):
        rows = make_selector(method).select(signals, budget, seed=3)
        assert_valid_selection(rows, n, budget)
        again = make_selector(method).select(signals, budget, seed=3)
        np.testing.assert_array_equal(rows, again)
    with pytest.raises(S2LError, match="more examples than"):
        make_selector(method).select(signals, n + 1, seed=0)
    with pytest.raises(S2LError, match="budget must be an int"):
        make_selector(method).select(signals, 2.0, seed=0)
    with pytest.raises(S2LError, match="seed"):
        make_selector(method).select(signals, 2, seed=-1)


@pytest.mark.parametrize("method", ["random", "random-balanced", "kmeans-embeddings"])
def test_random_methods_depend_on_seed(method):
    signals = _full_signals()
    # 5 clusters for k-means: with one cluster per example (K clamped to n) nothing is random.
    settings = {"n_clusters": 5} if method == "kmeans-embeddings" else {}
    picks = {tuple(make_selector(method, **settings).select(signals, 20, seed=s)) for s in range(4)}
    assert len(picks) > 1


@pytest.mark.parametrize(
    "method", ["length", "least-confidence", "middle-perplexity", "high-learnability"]
)
def test_rankings_ignore_seed(method):
    signals = _full_signals()
    first = make_selector(method).select(signals, 20, seed=0)
    np.testing.assert_array_equal(first, make_selector(method).select(signals, 20, seed=99))


@pytest.mark.parametrize(
    ("method", "missing", "needs"),
    [
        ("random-balanced", "sources", "Signals.sources"),
        ("length", "lengths", "Signals.lengths"),
        ("facility-location", "embeddings", "Signals.embeddings"),
        ("kmeans-embeddings", "embeddings", "Signals.embeddings"),
        ("s2l-checked", "target_probe", "s2l probe"),
    ],
)
def test_missing_signals_name_what_is_needed(method, missing, needs):
    full = _full_signals()
    fields = {
        "sources": full.sources,
        "lengths": full.lengths,
        "embeddings": full.embeddings,
        "target_probe": full.target_probe,
    }
    fields[missing] = None
    signals = _signals(full.losses, **fields)
    with pytest.raises(S2LError, match=needs.replace(".", r"\.")):
        make_selector(method).select(signals, 5, seed=0)


def test_rankings_read_a_memory_map(tmp_path):
    losses = np.random.default_rng(0).random((50, 4), dtype=np.float32)
    path = tmp_path / "losses.npy"
    np.save(path, losses)
    mapped = _signals(np.load(path, mmap_mode="r"))
    plain = _signals(losses)
    for method in (
        "least-confidence",
        "middle-perplexity",
        "high-learnability",
        "high-variability",
    ):
        np.testing.assert_array_equal(
            make_selector(method).select(mapped, 10, 0), make_selector(method).select(plain, 10, 0)
        )


# --------------------------------------------------------------------------------------------
# defining orders on hand-made signals


def test_least_confidence_picks_highest_final_loss():
    # The first checkpoint would give the opposite answer: only the last one may count.
    final = np.array([0.5, 3.0, 1.0, 2.5, 0.1, 2.9, 2.5])
    losses = np.stack([5.0 - final, final], axis=1)
    selector = make_selector("least-confidence")
    np.testing.assert_array_equal(selector.select(_signals(losses), 2, 0), [1, 5])
    # 2.5 appears at rows 3 and 6: the tie goes to the smaller row.
    np.testing.assert_array_equal(selector.select(_signals(losses), 3, 0), [1, 3, 5])
    np.testing.assert_allclose(selector.scores_, final)


def test_middle_perplexity_takes_the_band_around_the_median():
    final = np.array([7.0, 2.0, 5.0, 0.0, 8.0, 4.0, 1.0, 6.0, 3.0])  # ranks 0..8 shuffled
    losses = np.stack([np.zeros(9), final], axis=1)
    selector = make_selector("middle-perplexity")
    rows = selector.select(_signals(losses), 3, 0)
    assert sorted(final[rows].tolist()) == [3.0, 4.0, 5.0]  # the median 4 and its neighbours
    assert selector.band_ == (3.0, 5.0)
    assert sorted(final[selector.select(_signals(losses), 1, 0)].tolist()) == [4.0]
    assert sorted(final[selector.select(_signals(losses), 5, 0)].tolist()) == [2, 3, 4, 5, 6]
    # An odd excess (n=9, B=2 leaves 7) leans to the lower losses.
    assert sorted(final[selector.select(_signals(losses), 2, 0)].tolist()) == [3.0, 4.0]
    assert selector.select(_signals(losses), 0, 0).shape == (0,) and selector.band_ is None
    # Perplexity exp(loss) is monotone in the loss: the same band, as order is all that counts.
    assert np.all(np.diff(np.exp(np.sort(final))) > 0)


def test_high_learnability_picks_largest_drops():
    losses = np.array(
        [
            [4.0, 3.0, 3.9],  # drop 0.1 (but 1.0 from checkpoint 0 to 1)
            [4.0, 4.0, 1.0],  # drop 3.0
            [2.0, 2.0, 2.0],  # drop 0
            [5.0, 1.0, 3.0],  # drop 2.0 (4.0 from 0 to 1)
            [1.0, 1.0, 3.0],  # drop -2.0: forgotten
        ]
    )
    signals = _signals(losses)
    selector = make_selector("high-learnability")
    np.testing.assert_array_equal(selector.select(signals, 2, 0), [1, 3])
    np.testing.assert_allclose(selector.scores_, [0.1, 3.0, 0.0, 2.0, -2.0], atol=1e-6)
    early_drop = make_selector("high-learnability", early=0, late=1)
    np.testing.assert_array_equal(early_drop.select(signals, 2, 0), [0, 3])
    with pytest.raises(S2LError, match="late=3 is not a checkpoint"):
        make_selector("high-learnability", late=3).select(signals, 2, 0)
    with pytest.raises(S2LError, match="two different checkpoints"):
        make_selector("high-learnability", early=2, late=-1).select(signals, 2, 0)
    with pytest.raises(S2LError, match="two different checkpoints"):
        selector.select(_signals(losses[:, :1]), 2, 0)


def test_high_variability_picks_largest_std():
    losses = np.array(
        [
            [1.0, 1.0, 1.0, 1.0],  # std 0
            [1.0, 3.0, 1.0, 3.0],  # std 1
            [2.0, 2.5, 2.0, 2.5],  # std 0.25
            [0.0, 4.0, 0.0, 4.0],  # std 2
            [5.0, 5.0, 5.0, 5.0],  # std 0 (high but flat)
        ]
    )
    selector = make_selector("high-variability")
    np.testing.assert_array_equal(selector.select(_signals(losses), 2, 0), [1, 3])
    np.testing.assert_array_equal(selector.select(_signals(losses), 3, 0), [1, 2, 3])
    np.testing.assert_allclose(selector.scores_, losses.std(axis=1))
    with pytest.raises(S2LError, match="at least 2 checkpoints"):
        selector.select(_signals(losses[:, :1]), 2, 0)


def test_length_picks_longest_responses():
    lengths = np.array([10, 300, 25, 300, 7, 120])
    signals = _signals(np.ones((6, 2)), lengths=lengths)
    selector = make_selector("length")
    np.testing.assert_array_equal(selector.select(signals, 1, 0), [1])  # tie 300: row 1 first
    np.testing.assert_array_equal(selector.select(signals, 3, 0), [1, 3, 5])
    np.testing.assert_array_equal(selector.select(signals, 4, 0), [1, 2, 3, 5])


def test_random_balanced_follows_water_fill_over_sources():
    rng = np.random.default_rng(0)
    sizes = {"alpaca": 120, "dolly": 15, "gsm8k": 60, "oasst": 5}
    sources = np.repeat(list(sizes), list(sizes.values()))
    rng.shuffle(sources)
    signals = _signals(rng.random((len(sources), 3)), sources=sources)
    selector = make_selector("random-balanced")
    rows = selector.select(signals, 80, seed=1)
    assert_valid_selection(rows, signals.n, 80)
    quotas = water_fill(list(sizes.values()), 80)  # names already sorted alphabetically
    picked = {name: int((sources[rows] == name).sum()) for name in sizes}
    assert picked == dict(zip(sizes, quotas.tolist(), strict=True))
    assert selector.quotas_ == picked and selector.source_sizes_ == sizes
    # The same as wrapping random selection by hand.
    np.testing.assert_array_equal(rows, Stratified(RandomSelector()).select(signals, 80, seed=1))


# --------------------------------------------------------------------------------------------
# facility location


def _naive_greedy(neighbors: np.ndarray, sims: np.ndarray, budget: int) -> list[int]:
    """Textbook greedy on the dense similarity matrix: largest gain, ties to the smaller row."""
    n = len(neighbors)
    dense = np.zeros((n, n), dtype=np.float32)
    dense[np.repeat(np.arange(n), neighbors.shape[1]), neighbors.ravel()] = sims.ravel()
    best = np.zeros(n, dtype=np.float32)
    order: list[int] = []
    for _ in range(budget):
        gains = []
        for j in range(n):
            terms = dense[:, j] - best
            gains.append(-1.0 if j in order else math.fsum(terms[terms > 0].tolist()))
        j = int(np.argmax(gains))  # first maximum: the smaller row wins a tie
        order.append(j)
        best = np.maximum(best, dense[:, j])
    return order


def test_facility_location_picks_one_representative_per_cluster_first():
    points, group = _blobs([30, 10, 20])
    selector = make_selector("facility-location", n_neighbors=40)
    rows = selector.select(_signals(np.ones((60, 2)), embeddings=points), 3, seed=0)
    assert sorted(group[rows].tolist()) == [0, 1, 2]
    # The largest cluster serves most examples, so it is picked first.
    assert group[selector.order_[0]] == 0
    assert selector.knn_ == "exact" and selector.n_neighbors_ == 40
    # With a bigger budget, the first three picks still cover the three clusters.
    selector.select(_signals(np.ones((60, 2)), embeddings=points), 12, seed=0)
    assert sorted(group[selector.order_[:3]].tolist()) == [0, 1, 2]


def test_facility_location_objective_grows_along_the_greedy_order():
    points = np.random.default_rng(1).standard_normal((150, 5)).astype(np.float32)
    selector = make_selector("facility-location", n_neighbors=12)
    selector.select(_signals(np.ones((150, 2)), embeddings=points), 150, seed=0)
    neighbors, sims = facility.knn_graph(points, 12)
    values = [
        facility.facility_location_objective(neighbors, sims, selector.order_[:m])
        for m in range(151)
    ]
    assert values[0] == 0.0
    assert np.all(np.diff(values) >= -1e-9), "F must not decrease along the greedy order"
    np.testing.assert_allclose(values[1:], np.cumsum(selector.gains_), rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(selector.gains_) <= 1e-9), "greedy gains must not increase"
    assert math.isclose(selector.objective_, values[-1], rel_tol=1e-6)
    # Everything selected: every example serves itself with similarity 1.
    assert math.isclose(values[-1], 150.0, rel_tol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_greedy_equals_naive_greedy(seed):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((80, 4)).astype(np.float32)
    points[7] = points[3]  # a duplicate: a tie that must go to the smaller row
    neighbors, sims = facility.knn_graph(points, 10)
    order, gains = facility.lazy_greedy(neighbors, sims, 80)
    assert order.tolist() == _naive_greedy(neighbors, sims, 80)
    assert sorted(order.tolist()) == list(range(80))
    assert np.all(gains >= 0)


def test_knn_graph_matches_brute_force():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((40, 6)).astype(np.float32)
    points[5] = 0.0  # a zero vector is similar to nothing, itself included
    neighbors, sims = facility.knn_graph(points, 6)
    unit = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-30)
    full = unit @ unit.T
    for i in range(40):
        assert i in neighbors[i], "every row serves itself"
        expected = np.sort(np.maximum(np.sort(full[i])[-6:], 0))
        if i != 5:
            np.testing.assert_allclose(np.sort(sims[i]), expected, atol=1e-5)
    assert sims.min() >= 0.0
    assert sims[5].max() == 0.0


def test_knn_graph_ivf_fills_short_lists_with_self():
    points = np.random.default_rng(4).standard_normal((120, 6)).astype(np.float32)
    # 120 // 39 = 3 inverted lists of ~40 rows, one probed: fewer than 50 hits per query.
    neighbors, sims = facility.knn_graph(points, 50, "ivf", nprobe=1, seed=0)
    assert neighbors.min() >= 0 and sims.min() >= 0.0
    for i in range(120):
        own = sims[i][neighbors[i] == i]
        assert own.max() == pytest.approx(1.0, abs=1e-5), "every row serves itself fully"


def test_facility_location_ivf_search_and_settings():
    points, group = _blobs([200, 150, 100, 50], seed=3)
    signals = _signals(np.ones((500, 2)), embeddings=points)
    selector = make_selector("facility-location", n_neighbors=20, knn="ivf", nprobe=4)
    rows = selector.select(signals, 4, seed=5)
    assert selector.knn_ == "ivf"
    assert sorted(group[rows].tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(
        rows,
        make_selector("facility-location", knn="ivf", nprobe=4, n_neighbors=20).select(
            signals, 4, seed=5
        ),
    )
    for bad, message in [
        ({"n_neighbors": 0}, "n_neighbors must be an int >= 1"),
        ({"nprobe": 1.5}, "nprobe must be an int >= 1"),
        ({"knn": "hnsw"}, "unknown k-NN search 'hnsw'"),
    ]:
        with pytest.raises(S2LError, match=message):
            make_selector("facility-location", **bad).select(signals, 4, seed=0)
    nan = points.copy()
    nan[9, 2] = np.nan
    with pytest.raises(S2LError, match="row 9 is not finite"):
        make_selector("facility-location").select(
            _signals(np.ones((500, 2)), embeddings=nan), 4, seed=0
        )


# --------------------------------------------------------------------------------------------
# k-means on embeddings


# faiss seeds its k-means from randomly chosen points, so for some seeds (e.g. 1 here) the
# 10-member blob starts without a centroid and shares one with another blob, a local optimum of
# k-means; the seeds below avoid that, k-means++ (sklearn) does not need to.
@pytest.mark.parametrize(("backend", "seed"), [("faiss", 0), ("faiss", 2), ("sklearn", 0)])
def test_kmeans_embeddings_covers_every_cluster(backend, seed):
    points, group = _blobs([300, 100, 30, 10], spread=0.05, seed=2)
    signals = _signals(np.ones((440, 2)), embeddings=points)
    k, budget = 8, 40
    selector = make_selector("kmeans-embeddings", n_clusters=k, backend=backend)
    rows = selector.select(signals, budget, seed=seed)
    assert_valid_selection(rows, 440, budget)
    for cluster in range(k):
        assert len(np.unique(group[selector.labels_ == cluster])) <= 1, "a cluster mixes blobs"
    per_blob = np.bincount(group[rows], minlength=4)
    assert np.all(per_blob > 0), "every blob is represented"
    # Every cluster's first quota is 40 // 8 = 5, so the 10-member blob (whatever its number of
    # clusters) gets at least 5, where its share of the pool would be 10 / 440 * 40 < 1.
    assert per_blob[3] >= 5
    assert per_blob[0] < budget * 300 / 440  # the abundant blob is under-sampled
    assert selector.labels_.shape == (440,) and selector.n_clusters_ == k
    assert selector.cluster_sizes_.sum() == 440 and selector.cluster_taken_.sum() == budget
    np.testing.assert_array_equal(
        selector.cluster_taken_, np.bincount(selector.labels_[rows], minlength=k)
    )


def test_kmeans_embeddings_rejects_bad_settings():
    signals = _full_signals()
    with pytest.raises(S2LError, match="n_clusters"):
        make_selector("kmeans-embeddings", n_clusters=0).select(signals, 5, 0)
    with pytest.raises(S2LError, match="backend"):
        make_selector("kmeans-embeddings", backend="torch").select(signals, 5, 0)
