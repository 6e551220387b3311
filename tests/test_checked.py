"""s2l-checked (STAFF), s2l-cut (CCS) and kmq (kMQ): the selector contract and planted cases."""

from __future__ import annotations

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.selection import (
    SELECTORS,
    KMQSelector,
    S2LSelector,
    Signals,
    Stratified,
    TailCutS2LSelector,
    TargetCheckedS2LSelector,
    accepts,
    make_selector,
)
from smalltolarge.selection.base import needs_probe

from .conftest import assert_valid_selection

METHODS = ["s2l-checked", "s2l-cut", "kmq"]

# Two clusters of one row per 1 nat apart, as k-means must find them.
SMALL = {"n_clusters": 2, "min_rows_per_cluster": 1}

# --------------------------------------------------------------------------------------------
# fixtures


def _signals(losses, probe=None, sources=None, target=None) -> Signals:
    losses = np.asarray(losses, dtype=np.float32)
    return Signals(
        losses=losses,
        ids=np.arange(len(losses)),
        sources=sources,
        target_probe=probe,
        target_losses=target,
    )


def _two_groups(n_per: int = 100, seed: int = 0):
    """Group A (rows ``[0, n_per)``) around the trajectory [3, 2] and group B (the rest)
    around [6, 5], noise 0.05; every other row probed, the target knowing A (probe loss ~0.3)
    and not B (~3.0). The proxy's final loss is 2 on A and 5 on B, so the target/proxy ratio
    is ~0.15 on A and ~0.6 on B."""
    rng = np.random.default_rng(seed)
    a = np.array([3.0, 2.0]) + rng.normal(0, 0.05, (n_per, 2))
    b = np.array([6.0, 5.0]) + rng.normal(0, 0.05, (n_per, 2))
    losses = np.vstack([a, b]).astype(np.float32)
    probe = np.full(2 * n_per, np.nan, dtype=np.float32)
    probe[0:n_per:2] = 0.3 + rng.normal(0, 0.01, len(probe[0:n_per:2]))
    probe[n_per::2] = 3.0 + rng.normal(0, 0.01, len(probe[n_per::2]))
    return losses, probe


def _mixed_signals(n: int = 200, t: int = 5, seed: int = 1) -> Signals:
    """Random decreasing trajectories, a probe of every third row, two sources."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(2.0, 6.0, (n, 1))
    drop = rng.uniform(0.0, 0.9, (n, 1))
    losses = start * (1 - drop * np.linspace(0, 1, t)[None, :]) + rng.normal(0, 0.05, (n, t))
    probe = np.full(n, np.nan)
    probe[::3] = rng.uniform(0.5, 4.0, len(probe[::3]))
    sources = np.array(["alpaca", "gsm8k"])[rng.integers(0, 2, n)]
    return _signals(np.abs(losses), probe, sources)


# --------------------------------------------------------------------------------------------
# registry and the selector contract


def test_registered_with_their_settings():
    assert SELECTORS["s2l-checked"] is TargetCheckedS2LSelector
    assert SELECTORS["s2l-cut"] is TailCutS2LSelector
    assert SELECTORS["kmq"] is KMQSelector
    assert TargetCheckedS2LSelector.param_names() == [
        "n_clusters",
        "n_iter",
        "backend",
        "min_rows_per_cluster",
        "check_weight",
    ]
    assert TailCutS2LSelector.param_names() == [
        "n_clusters",
        "n_iter",
        "backend",
        "min_rows_per_cluster",
        "outlier_max_size",
        "cut_fraction",
    ]
    assert KMQSelector.param_names() == ["n_clusters", "n_iter", "backend", "min_rows_per_cluster"]
    checked = make_selector("s2l-checked", n_clusters=7, check_weight=0.5, backend=None)
    assert checked.get_params() == {
        "n_clusters": 7,
        "n_iter": 20,
        "backend": "faiss",
        "min_rows_per_cluster": 10,
        "check_weight": 0.5,
    }
    assert make_selector("s2l-cut", cut_fraction=0.2).cut_fraction == 0.2
    # A preset's outlier_max_size is not pushed into s2l-checked (it takes none).
    assert not accepts("s2l-checked", "outlier_max_size") and accepts("s2l-cut", "outlier_max_size")
    with pytest.raises(S2LError, match="does not take outlier_max_size"):
        make_selector("s2l-checked", outlier_max_size=2)
    for method in METHODS:
        selector = make_selector(method)
        assert selector.name == method
        assert "0x" not in repr(selector), "settings text feeds a fingerprint: no addresses"
    # Only s2l-checked reads the probe, wrapped or not.
    assert needs_probe(make_selector("s2l-checked"))
    assert needs_probe(make_selector("s2l-checked", stratify=True))
    assert not needs_probe(make_selector("s2l-cut")) and not needs_probe(make_selector("kmq"))


@pytest.mark.parametrize("method", METHODS)
def test_exact_budget_sorted_unique_and_deterministic(method):
    signals = _mixed_signals()
    n = signals.n
    for budget in (0, 1, 7, 50, n - 1, n):
        rows = make_selector(method, n_clusters=5).select(signals, budget, seed=3)
        assert_valid_selection(rows, n, budget)
        again = make_selector(method, n_clusters=5).select(signals, budget, seed=3)
        np.testing.assert_array_equal(rows, again)
    picks = {tuple(make_selector(method, n_clusters=5).select(signals, 40, s)) for s in range(4)}
    assert len(picks) > 1, "the seed must reach the draws"
    with pytest.raises(S2LError, match="more examples than"):
        make_selector(method).select(signals, n + 1, seed=0)
    with pytest.raises(S2LError, match="seed"):
        make_selector(method).select(signals, 2, seed=-1)


@pytest.mark.parametrize("method", METHODS)
def test_clustering_attributes_and_summary(method):
    signals = _mixed_signals()
    selector = make_selector(method, n_clusters=5)
    rows = selector.select(signals, 60, seed=0)
    assert selector.labels_.shape == (signals.n,) and selector.labels_.min() >= 0
    assert selector.n_clusters_ == 5
    assert selector.cluster_taken_.sum() == 60 and selector.cluster_sizes_.shape == (5,)
    summary = selector.summary_()
    assert summary["clusters"]["n_clusters"] == 5 and sum(summary["clusters"]["taken"]) == 60
    assert summary["n_clusters_effective"] == 5 and summary["n_clusters_requested"] == 5
    assert isinstance(summary["warnings"], list)
    if method != "s2l-cut":  # s2l-cut's clusters cover the kept rows only
        np.testing.assert_array_equal(
            selector.cluster_taken_, np.bincount(selector.labels_[rows], minlength=5)
        )


@pytest.mark.parametrize("method", METHODS)
def test_memory_map_selects_like_an_array(method, tmp_path):
    signals = _mixed_signals()
    path = tmp_path / "losses.npy"
    np.save(path, signals.losses)
    mapped = _signals(np.load(path, mmap_mode="r"), signals.target_probe)
    plain = _signals(signals.losses, signals.target_probe)
    a = make_selector(method, n_clusters=5).select(mapped, 40, seed=1)
    b = make_selector(method, n_clusters=5).select(plain, 40, seed=1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_works_inside_stratified(method):
    signals = _mixed_signals(n=300)
    wrapper = make_selector(method, stratify=True, n_clusters=4)
    rows = wrapper.select(signals, 90, seed=2)
    assert_valid_selection(rows, signals.n, 90)
    np.testing.assert_array_equal(rows, wrapper.select(signals, 90, seed=2))
    summary = wrapper.summary_()
    assert sum(summary["source_quotas"].values()) == 90
    assert sum(summary["clusters"]["taken"]) == 90
    assert wrapper.labels_.shape == (signals.n,)


@pytest.mark.parametrize("method", METHODS)
def test_empty_pool_is_refused(method):
    empty = _signals(np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(S2LError, match="empty pool"):
        make_selector(method).select(empty, 0, seed=0)


@pytest.mark.parametrize(
    ("method", "settings", "match"),
    [
        ("s2l-checked", {"check_weight": 1.5}, "check_weight"),
        ("s2l-checked", {"check_weight": -0.1}, "check_weight"),
        ("s2l-checked", {"check_weight": "high"}, "check_weight"),
        ("s2l-checked", {"check_weight": True}, "check_weight"),
        ("s2l-checked", {"n_clusters": 0}, "n_clusters"),
        ("s2l-cut", {"cut_fraction": 1.0}, "cut_fraction"),
        ("s2l-cut", {"cut_fraction": -0.1}, "cut_fraction"),
        ("s2l-cut", {"cut_fraction": "10%"}, "cut_fraction"),
        ("s2l-cut", {"outlier_max_size": -1}, "outlier_max_size"),
        ("kmq", {"n_clusters": 0}, "n_clusters"),
        ("kmq", {"n_iter": 2.5}, "n_iter"),
        ("kmq", {"backend": "torch"}, "backend"),
    ],
)
def test_bad_settings_are_refused(method, settings, match):
    with pytest.raises(S2LError, match=match):
        make_selector(method, **settings)
    signals = _mixed_signals(n=50)
    with pytest.raises(S2LError, match=match):  # also when built directly
        SELECTORS[method](**settings).select(signals, 5, seed=0)


# --------------------------------------------------------------------------------------------
# s2l-checked


def test_checked_takes_more_where_the_target_has_more_to_learn():
    losses, probe = _two_groups()
    signals = _signals(losses, probe)
    budget = 50
    plain = S2LSelector(**SMALL).select(signals, budget, seed=0)
    assert (plain < 100).sum() == (plain >= 100).sum() == 25  # S2L: equal shares
    selector = TargetCheckedS2LSelector(**SMALL)
    rows = selector.select(signals, budget, seed=0)
    assert_valid_selection(rows, signals.n, budget)
    from_a, from_b = int((rows < 100).sum()), int((rows >= 100).sum())
    # shares ~0.2 / ~0.8 of the budget: A (known to the target) gives up rows to B
    assert from_a <= 12 and from_b >= 38 and from_a + from_b == budget
    check = selector.summary_()["target_check"]
    assert check["check_weight"] == 1.0 and check["n_probed"] == 100
    assert check["clusters_probed"] == check["n_clusters"] == 2
    assert check["probe_counts_against_budget"] is False
    assert sorted(check["ratio"]) == pytest.approx([0.15, 0.6], abs=0.01)
    assert sum(check["quotas_plain"]) == sum(check["quotas_checked"]) == budget
    assert check["quotas_plain"] == [25, 25]
    assert sorted(check["quotas_checked"]) == sorted([from_a, from_b])
    assert check["moved"] == 25 - from_a
    # halfway between plain S2L and fully checked
    half = TargetCheckedS2LSelector(**SMALL, check_weight=0.5).select(signals, budget, seed=0)
    assert from_a < int((half < 100).sum()) < 25


def test_checked_at_weight_zero_is_plain_s2l():
    signals = _mixed_signals()
    for seed in range(3):
        for budget in (1, 33, 120):
            np.testing.assert_array_equal(
                TargetCheckedS2LSelector(n_clusters=6, check_weight=0.0).select(
                    signals, budget, seed
                ),
                S2LSelector(n_clusters=6).select(signals, budget, seed),
            )
    losses, probe = _two_groups()
    np.testing.assert_array_equal(
        TargetCheckedS2LSelector(**SMALL, check_weight=0).select(_signals(losses, probe), 50, 4),
        S2LSelector(**SMALL).select(_signals(losses), 50, 4),
    )


def test_checked_needs_the_probe():
    losses, probe = _two_groups()
    with pytest.raises(S2LError, match="probe losses.*s2l probe"):
        TargetCheckedS2LSelector(**SMALL).select(_signals(losses), 10, seed=0)
    # a probe with no value here: plain S2L's quotas, and a warning that says why
    nothing = TargetCheckedS2LSelector(**SMALL)
    rows = nothing.select(_signals(losses, np.full(200, np.nan)), 10, seed=0)
    np.testing.assert_array_equal(rows, S2LSelector(**SMALL).select(_signals(losses), 10, 0))
    assert any("none of these 200 examples" in w and "s2l probe" in w for w in nothing.warnings_)
    with pytest.raises(S2LError, match="target set"):
        TargetCheckedS2LSelector(**SMALL).select(
            _signals(losses, probe, target=losses[:5]), 10, seed=0
        )


def test_checked_inside_stratified_keeps_the_target_check_per_source():
    losses, probe = _two_groups()
    sources = np.tile(["x", "x", "y", "y"], 50)  # both groups, probed rows in both sources
    signals = _signals(losses, probe, sources)
    wrapper = Stratified(TargetCheckedS2LSelector(**SMALL))
    rows = wrapper.select(signals, 60, seed=1)
    assert_valid_selection(rows, signals.n, 60)
    assert (rows < 100).sum() < (rows >= 100).sum() / 2
    for fitted in wrapper.selectors_.values():
        assert fitted.summary_()["target_check"]["clusters_probed"] == 2
    # A source without a probed row cannot be checked: it keeps plain S2L's quotas, with a
    # warning naming the source, and the other sources are still checked.
    unprobed = _signals(losses, probe, np.tile(["x", "y"], 100))  # y: the odd rows only
    wrapper = Stratified(TargetCheckedS2LSelector(**SMALL))
    assert_valid_selection(wrapper.select(unprobed, 60, seed=1), unprobed.n, 60)
    assert any(w.startswith("source y: none of these 100") for w in wrapper.warnings_)
    assert wrapper.selectors_["x"].summary_()["target_check"]["clusters_probed"] == 2


def test_checked_cluster_without_probe_borrows_the_nearest_ratio():
    # Three groups; C (rows 200..299, around [6.5, 5.5]) is never probed and lies next to B.
    losses, probe = _two_groups()
    rng = np.random.default_rng(5)
    c = np.array([6.5, 5.5]) + rng.normal(0, 0.05, (100, 2))
    signals = _signals(np.vstack([losses, c]), np.concatenate([probe, np.full(100, np.nan)]))
    selector = TargetCheckedS2LSelector(n_clusters=3, min_rows_per_cluster=1)
    rows = selector.select(signals, 90, seed=0)
    label_of = {
        g: int(np.bincount(selector.labels_[g * 100 : (g + 1) * 100]).argmax()) for g in (0, 1, 2)
    }
    assert len(set(label_of.values())) == 3, "k-means must find the three groups"
    assert selector.ratios_[label_of[2]] == selector.ratios_[label_of[1]]
    assert (rows < 100).sum() < (rows >= 200).sum()
    assert selector.summary_()["target_check"]["clusters_probed"] == 2
    assert not any("probed example" in w for w in selector.warnings_)


def test_checked_warns_when_few_clusters_are_probed():
    signals = _mixed_signals()
    probe = np.full(signals.n, np.nan)
    probe[np.argmin(signals.losses[:, -1])] = 1.0  # one probed row: one probed cluster of 6
    selector = TargetCheckedS2LSelector(n_clusters=6)
    rows = selector.select(_signals(signals.losses, probe), 40, seed=0)
    assert_valid_selection(rows, signals.n, 40)
    assert any("only 1 of 6 clusters hold a probed example" in w for w in selector.warnings_)
    # every cluster borrowed the one ratio: all shares equal
    assert len(set(selector.ratios_.tolist())) == 1


# --------------------------------------------------------------------------------------------
# s2l-cut


def _with_tail(n: int = 200, seed: int = 0):
    """Trajectories that fall to ~1-2 nats, but 10% of the rows (every tenth) stay at ~8."""
    rng = np.random.default_rng(seed)
    losses = np.linspace(4.0, 1.0, 4)[None, :] + rng.normal(0, 0.3, (n, 4))
    tail = np.arange(0, n, 10)
    losses[tail] = 8.0 + rng.normal(0, 0.1, (len(tail), 4))
    return np.abs(losses).astype(np.float32), tail


def test_cut_never_selects_the_tail():
    losses, tail = _with_tail()
    signals = _signals(losses)
    for seed in range(3):
        selector = TailCutS2LSelector(n_clusters=4, cut_fraction=0.1)
        rows = selector.select(signals, 120, seed=seed)
        assert_valid_selection(rows, signals.n, 120)
        assert not np.isin(rows, tail).any()
        np.testing.assert_array_equal(selector.cut_rows_, tail)
        assert (selector.labels_[tail] == selector.n_clusters_).all()
        assert (selector.labels_[np.setdiff1d(np.arange(200), tail)] < selector.n_clusters_).all()
        cut = selector.summary_()["tail_cut"]
        assert cut["cut_fraction"] == 0.1 and cut["n_cut"] == 20 and cut["n_kept"] == 180
        assert cut["final_loss_threshold"] == pytest.approx(losses[tail, -1].min())
        assert sum(selector.summary_()["clusters"]["sizes"]) == 180
    plain = S2LSelector(n_clusters=4).select(signals, 120, seed=0)
    assert np.isin(plain, tail).any(), "plain S2L keeps a cluster of the tail"


def test_cut_shrinks_so_the_budget_fits():
    losses, tail = _with_tail()
    signals = _signals(losses)
    selector = TailCutS2LSelector(n_clusters=4, cut_fraction=0.1)
    rows = selector.select(signals, 190, seed=0)
    assert_valid_selection(rows, signals.n, 190)
    assert selector.summary_()["tail_cut"]["n_cut"] == 10
    assert np.isin(rows, tail).sum() == 10
    assert any("reduced from 20 to 10" in w for w in selector.warnings_)
    rows = selector.select(signals, 200, seed=0)
    assert_valid_selection(rows, signals.n, 200)
    cut = selector.summary_()["tail_cut"]
    assert cut["n_cut"] == 0 and cut["final_loss_threshold"] is None


def test_cut_ties_go_to_the_smaller_row_and_zero_is_plain_s2l():
    flat = np.ones((50, 3), dtype=np.float32)
    selector = TailCutS2LSelector(n_clusters=2, cut_fraction=0.2)
    selector.select(_signals(flat), 10, seed=0)
    np.testing.assert_array_equal(selector.cut_rows_, np.arange(10))
    # floor(0.29 * 100) is 29, not the 28 of a float product just below it
    selector = TailCutS2LSelector(n_clusters=2, cut_fraction=0.29)
    selector.select(_signals(np.ones((100, 3))), 10, seed=0)
    assert len(selector.cut_rows_) == 29
    signals = _mixed_signals()
    np.testing.assert_array_equal(
        TailCutS2LSelector(n_clusters=5, cut_fraction=0.0).select(signals, 60, seed=2),
        S2LSelector(n_clusters=5).select(signals, 60, seed=2),
    )


# --------------------------------------------------------------------------------------------
# kmq


def _sizes_150_50(seed: int = 0):
    """150 rows around [5, 3] and 50 around [2, 1.5]: two clusters of sizes 3:1."""
    rng = np.random.default_rng(seed)
    big = np.array([5.0, 3.0]) + rng.normal(0, 0.05, (150, 2))
    small = np.array([2.0, 1.5]) + rng.normal(0, 0.05, (50, 2))
    return np.vstack([big, small]).astype(np.float32)


def test_kmq_quotas_follow_cluster_sizes():
    signals = _signals(_sizes_150_50())
    for budget in (4, 20, 41, 101, 199):
        selector = KMQSelector(**SMALL)
        rows = selector.select(signals, budget, seed=0)
        assert_valid_selection(rows, signals.n, budget)
        from_big = int((rows < 150).sum())
        assert abs(from_big - 0.75 * budget) <= 1, (budget, from_big)
    plain = S2LSelector(**SMALL).select(signals, 40, seed=0)
    assert (plain < 150).sum() == 20  # S2L: equal shares, kmq: in proportion


def test_kmq_draws_favour_what_the_proxy_learned():
    # One cluster (K = 1): half the rows drop from 3 to 1 nat (q = 2/3), half stay at 2 (q = 0).
    rng = np.random.default_rng(0)
    learned = np.array([3.0, 2.0, 1.0]) + rng.normal(0, 0.02, (100, 3))
    stuck = np.array([2.0, 2.0, 2.0]) + rng.normal(0, 0.02, (100, 3))
    signals = _signals(np.abs(np.vstack([learned, stuck])))
    picked = np.zeros(200, dtype=int)
    for seed in range(20):
        selector = KMQSelector(n_clusters=1)
        rows = selector.select(signals, 30, seed=seed)
        picked[rows] += 1
    assert picked[:100].sum() >= 0.95 * picked.sum()
    quality = selector.summary_()["quality"]
    assert quality["mean_subset"] > quality["mean_pool"] > 0
    assert "L_first" in quality["definition"]
    np.testing.assert_allclose(selector.quality_[:100], 2 / 3, atol=0.05)


def test_kmq_with_one_checkpoint_draws_uniformly_and_says_so():
    losses = np.random.default_rng(0).uniform(1, 3, (100, 1))
    selector = KMQSelector(n_clusters=2)
    rows = selector.select(_signals(losses), 30, seed=0)
    assert_valid_selection(rows, 100, 30)
    assert (selector.quality_ == 0).all()
    assert any("uniform" in w for w in selector.warnings_)
