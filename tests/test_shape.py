"""Shape-aware S2L: the selector contract, the feature maps, and shape families S2L mixes."""

from __future__ import annotations

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.selection import (
    SELECTORS,
    CartographyS2LSelector,
    S2LSelector,
    ShapeS2LSelector,
    Signals,
    Stratified,
    WhitenedS2LSelector,
    make_selector,
)

from .conftest import assert_valid_selection

SHAPE_METHODS = ["s2l-whitened", "s2l-shape", "s2l-cartography"]

# --------------------------------------------------------------------------------------------
# fixtures


def _signals(losses: np.ndarray, sources: np.ndarray | None = None) -> Signals:
    losses = np.asarray(losses, dtype=np.float32)
    return Signals(losses=losses, ids=np.arange(len(losses)), sources=sources)


def _two_shape_families(n: int = 400, t: int = 12, seed: int = 0):
    """Trajectories of two shape families at the same level, and each row's family.

    Family 0 drops by 1 nat in the first two checkpoints, then stays flat; family 1 drops by
    1 nat linearly over the whole run. Both shapes are centred (mean 0 over the checkpoints),
    so a family says nothing about an example's mean loss; the levels are uniform on [1, 4]
    (variance 0.75 per checkpoint, about 40 times the variance the shapes add), plus noise of
    0.02 nats per checkpoint.
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(t)
    fast = np.where(steps < 2, 1.0 - 0.5 * steps, 0.0)
    slow = 1.0 - steps / (t - 1)
    shapes = np.stack([fast - fast.mean(), slow - slow.mean()])
    family = np.repeat([0, 1], n // 2)
    rng.shuffle(family)
    level = rng.uniform(1.0, 4.0, n)
    losses = level[:, None] + shapes[family] + rng.normal(0.0, 0.02, (n, t))
    return losses.astype(np.float32), family


def _purity(labels: np.ndarray, family: np.ndarray) -> float:
    """Share of examples in the majority family of their cluster (1.0: every cluster pure)."""
    majority = sum(np.bincount(family[labels == c]).max() for c in np.unique(labels))
    return majority / len(labels)


# --------------------------------------------------------------------------------------------
# registry and the selector contract


def test_registered_with_s2l_settings():
    assert SELECTORS["s2l-whitened"] is WhitenedS2LSelector
    assert SELECTORS["s2l-shape"] is ShapeS2LSelector
    assert SELECTORS["s2l-cartography"] is CartographyS2LSelector
    whitened = make_selector("s2l-whitened", n_clusters=7, n_components=3, backend=None)
    assert isinstance(whitened, S2LSelector) and whitened.name == "s2l-whitened"
    assert (whitened.n_clusters, whitened.n_components, whitened.backend) == (7, 3, "faiss")
    shape = make_selector("s2l-shape", shape_weight=0.25, stratify=True)
    assert isinstance(shape, Stratified) and shape.selector.shape_weight == 0.25
    # S2L's own settings keep S2L's defaults.
    plain = S2LSelector()
    for selector in (WhitenedS2LSelector(), ShapeS2LSelector(), CartographyS2LSelector()):
        assert (selector.n_clusters, selector.n_iter, selector.backend) == (
            plain.n_clusters,
            plain.n_iter,
            plain.backend,
        )
        # The settings text feeds a selection's fingerprint: no memory addresses.
        assert "0x" not in repr(selector) and type(selector).__name__ in repr(selector)
    with pytest.raises(S2LError, match="shape_weight"):
        make_selector("s2l-whitened", shape_weight=0.5)


@pytest.mark.parametrize("method", SHAPE_METHODS)
def test_exact_budget_sorted_unique_and_deterministic(method):
    losses, _ = _two_shape_families(n=120)
    signals = _signals(losses)
    for budget in (0, 1, 17, 60, 119, 120):
        rows = make_selector(method, n_clusters=6).select(signals, budget, seed=5)
        assert_valid_selection(rows, signals.n, budget)
        again = make_selector(method, n_clusters=6).select(signals, budget, seed=5)
        np.testing.assert_array_equal(rows, again)
    picks = {tuple(make_selector(method, n_clusters=6).select(signals, 30, s)) for s in range(4)}
    assert len(picks) > 1, "the seed must reach the draws"
    with pytest.raises(S2LError, match="more examples than"):
        make_selector(method).select(signals, signals.n + 1, seed=0)
    with pytest.raises(S2LError, match="seed"):
        make_selector(method).select(signals, 2, seed=-1)


@pytest.mark.parametrize("method", SHAPE_METHODS)
def test_memory_map_selects_like_an_array(method, tmp_path):
    losses, _ = _two_shape_families(n=100)
    path = tmp_path / "losses.npy"
    np.save(path, losses)
    mapped = _signals(np.load(path, mmap_mode="r"))
    a = make_selector(method, n_clusters=5).select(mapped, 40, seed=1)
    b = make_selector(method, n_clusters=5).select(_signals(losses), 40, seed=1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", SHAPE_METHODS)
@pytest.mark.parametrize(
    "losses",
    [
        np.tile([3.0, 2.0, 1.0], (30, 1)),  # identical trajectories
        np.linspace(1, 3, 30)[:, None] * np.ones((1, 4)),  # flat rows, levels differ
        np.linspace(1, 3, 30)[:, None],  # a single checkpoint
        np.ones((1, 4)),  # one example
    ],
    ids=["identical", "flat", "one-checkpoint", "one-example"],
)
def test_degenerate_trajectories_still_select_exactly(method, losses):
    signals = _signals(losses)
    budget = min(10, signals.n)
    rows = make_selector(method, n_clusters=3).select(signals, budget, seed=0)
    assert_valid_selection(rows, signals.n, budget)


@pytest.mark.parametrize("method", SHAPE_METHODS)
def test_empty_pool_is_refused(method):
    with pytest.raises(S2LError, match="empty pool"):
        make_selector(method).select(_signals(np.zeros((0, 4))), 0, seed=0)


@pytest.mark.parametrize(
    ("method", "settings", "match"),
    [
        ("s2l-whitened", {"n_components": 0}, "n_components"),
        ("s2l-whitened", {"n_components": 1.5}, "n_components"),
        ("s2l-whitened", {"n_components": True}, "n_components"),
        ("s2l-whitened", {"n_components": "all"}, "n_components"),
        ("s2l-whitened", {"min_variance_share": 1.0}, "min_variance_share"),
        ("s2l-whitened", {"min_variance_share": -0.1}, "min_variance_share"),
        ("s2l-shape", {"shape_weight": 1.5}, "shape_weight"),
        ("s2l-shape", {"shape_weight": "half"}, "shape_weight"),
        ("s2l-shape", {"n_clusters": 0}, "n_clusters"),
    ],
)
def test_bad_settings_are_named(method, settings, match):
    losses, _ = _two_shape_families(n=40)
    with pytest.raises(S2LError, match=match):
        make_selector(method, **settings).select(_signals(losses), 10, seed=0)


# --------------------------------------------------------------------------------------------
# shape families at the same level: the point of these selectors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shape_aware_clusters_separate_families_that_plain_s2l_mixes(seed):
    losses, family = _two_shape_families(seed=seed)
    signals = _signals(losses)
    plain = S2LSelector(n_clusters=8)
    plain.select(signals, 100, seed)
    # Plain S2L cuts the pool into level bands, each holding both families.
    assert _purity(plain.labels_, family) < 0.8
    for selector in (WhitenedS2LSelector(n_clusters=8), ShapeS2LSelector(n_clusters=8)):
        selector.select(signals, 100, seed)
        assert _purity(selector.labels_, family) > 0.98, selector.name


# --------------------------------------------------------------------------------------------
# the feature maps


def _sign_grid(scales: list[float]) -> np.ndarray:
    """Every sign combination of ``±scale_j`` on axis ``j``: covariance exactly diag(scale^2)."""
    t = len(scales)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * t)).reshape(t, -1).T
    return 5.0 + signs * np.array(scales)


@pytest.mark.parametrize(
    ("n_components", "min_variance_share", "kept"),
    [
        # Shares 100, 9, 1, 1e-4 over 110.0001: 0.909, 0.0818, 0.0091, 9e-7.
        (0.99, 1e-3, 2),
        (0.995, 1e-3, 3),
        (1.0, 1e-3, 3),  # the noise-level component stays out
        (4, 1e-3, 3),
        (4, 0.0, 4),
        (1, 1e-3, 1),
        (0.5, 1e-3, 1),
        (0.99, 0.5, 1),  # a floor above every share still keeps one component
    ],
)
def test_whitening_keeps_the_documented_components(n_components, min_variance_share, kept):
    signals = _signals(_sign_grid([10.0, 3.0, 1.0, 0.01]))
    selector = WhitenedS2LSelector(
        n_clusters=2, n_components=n_components, min_variance_share=min_variance_share
    )
    selector.select(signals, 4, seed=0)
    assert selector.n_components_ == kept
    # float32 rounding of 5 +- 0.01 moves the smallest variance by about 5e-9.
    np.testing.assert_allclose(
        selector.explained_variance_, [100, 9, 1, 1e-4][:kept], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        np.abs(selector.components_), np.eye(4)[:kept], atol=1e-6, err_msg="axis directions"
    )


def test_whitened_features_have_unit_variance_per_component():
    losses, _ = _two_shape_families(n=200)
    selector = WhitenedS2LSelector(min_variance_share=0.0, n_components=4)
    features = selector._features(_signals(losses))
    assert features.shape == (200, 4) and features.dtype == np.float32
    np.testing.assert_allclose(np.cov(features.T, bias=True), np.eye(4), atol=1e-4)


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_shape_features_give_level_and_shape_the_set_weights(weight):
    losses, _ = _two_shape_families(n=200)
    selector = ShapeS2LSelector(shape_weight=weight)
    features = selector._features(_signals(losses)).astype(np.float64)
    assert features.shape == (200, 13)
    level, shape = features[:, 0], features[:, 1:]
    assert level.var() == pytest.approx(1.0 - weight, abs=1e-5)
    assert shape.var(axis=0).sum() == pytest.approx(weight, abs=1e-5)
    # The level column is the standardised row mean; each shape row has mean zero.
    if weight < 1:
        x = losses.astype(np.float64).mean(axis=1)
        expected = (x - x.mean()) / x.std() * np.sqrt(1 - weight)
        np.testing.assert_allclose(level, expected, atol=1e-5)
    np.testing.assert_allclose(shape.sum(axis=1), 0.0, atol=1e-5)


def test_shape_features_drop_a_part_without_variance():
    one_checkpoint = ShapeS2LSelector()
    features = one_checkpoint._features(_signals(np.linspace(1, 3, 30)[:, None]))
    assert one_checkpoint.shape_scale_ == 0.0
    np.testing.assert_array_equal(features[:, 1:], 0.0)
    same_level = ShapeS2LSelector()
    u = np.array([1.0, 0.0, -1.0])
    same_level._features(_signals(2.0 + np.linspace(-1, 1, 21)[:, None] * u))
    assert same_level.level_scale_ == 0.0 and same_level.shape_scale_ > 0


def test_cartography_coordinates_are_confidence_and_variability():
    losses = np.array([[0.0, 0.0], [np.log(2), np.log(4)], [np.log(4), np.log(4)]])
    selector = CartographyS2LSelector(n_clusters=1)
    features = selector._features(_signals(losses))
    np.testing.assert_allclose(
        selector.coordinates_, [[1.0, 0.0], [0.375, 0.125], [0.25, 0.0]], atol=1e-6
    )
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-5)
