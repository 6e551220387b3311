"""Trajectory diagnostics: variance shares, PC1 correlations, NMI and warnings on known matrices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.selection import diagnostics, trajectory_diagnostics


def _assert_json_ready(result: dict) -> None:
    # allow_nan=False: an undefined statistic must be None, never NaN.
    json.dumps(result, allow_nan=False)


def _levels_and_two_shapes() -> np.ndarray:
    """80 rows of 4 checkpoints: level -1 or +1, plus shape u or v, all four pairs equally often.

    u = (1, -1, 0, 0)/sqrt(2) and v = (0, 0, 1, -1)/sqrt(2) are orthonormal and orthogonal to
    the ones vector, so: level variance 4 * var(level) = 4, shape variance |u - v|^2 / 4 = 0.5,
    total 4.5. The loss at the last checkpoint is level + {0, -1/sqrt(2)}, whose correlation
    with the level is 1 / sqrt(1 + 1/8) = sqrt(8/9).
    """
    u = np.array([1.0, -1.0, 0.0, 0.0]) / math.sqrt(2)
    v = np.array([0.0, 0.0, 1.0, -1.0]) / math.sqrt(2)
    rows = [
        level * np.ones(4) + shape for level in (-1.0, 1.0) for shape in (u, v) for _ in range(20)
    ]
    return 3.0 + np.array(rows)


# --------------------------------------------------------------------------------------------
# variance shares and correlations with known answers


def test_level_only_rank_one_matrix():
    # Every row flat at its own level: one number per example, all of it level.
    levels = np.linspace(0.5, 4.0, 30)
    losses = np.repeat(levels[:, None], 6, axis=1).astype(np.float32)  # like the artifact
    result = trajectory_diagnostics(losses)
    assert result["n_examples"] == 30 and result["n_checkpoints"] == 6
    assert result["pc1_share"] == pytest.approx(1.0, abs=1e-9)
    assert result["level_share"] == pytest.approx(1.0, abs=1e-9)
    assert result["shape_share"] == pytest.approx(0.0, abs=1e-9)
    assert result["pc_shares"][1:] == pytest.approx([0.0] * 5, abs=1e-9)
    assert result["pc1_level_correlation"] == pytest.approx(1.0)
    assert result["pc1_final_correlation"] == pytest.approx(1.0)
    assert result["total_variance"] == pytest.approx(6 * np.var(levels), rel=1e-6)
    assert result["mean_trajectory"] == pytest.approx([levels.mean()] * 6, rel=1e-6)
    # Flat rows: the "nothing changes" warning says it, not also the share warnings.
    assert len(result["warnings"]) == 1
    assert "no example's loss changes" in result["warnings"][0]
    _assert_json_ready(result)


def test_level_dominated_trajectories_warn_in_plain_words():
    # A common decay plus a spread of levels: the case the issue measured on real proxies.
    rng = np.random.default_rng(0)
    curve = np.exp(-np.arange(8) / 2.0)
    losses = rng.uniform(1, 4, (200, 1)) + curve + rng.normal(0, 0.01, (200, 8))
    result = trajectory_diagnostics(losses)
    assert result["pc1_share"] > 0.99 and result["shape_share"] < 0.01
    assert result["pc1_level_correlation"] > 0.999
    text = " ".join(result["warnings"])
    assert "effectively one number per example" in text
    assert "sorts examples by loss level" in text


def test_shape_only_rank_one_matrix():
    # Same level for every row, rows differ along one shape direction orthogonal to the ones.
    u = np.array([1.0, 0.0, -1.0])
    losses = 2.0 + np.linspace(-1, 1, 21)[:, None] * u
    result = trajectory_diagnostics(losses)
    assert result["pc1_share"] == pytest.approx(1.0)
    assert result["shape_share"] == pytest.approx(1.0)
    assert result["level_share"] == pytest.approx(0.0, abs=1e-12)
    # The level is the same for every example: its correlation is undefined, not NaN.
    assert result["pc1_level_correlation"] is None
    assert abs(result["pc1_final_correlation"]) == pytest.approx(1.0)
    assert len(result["warnings"]) == 1 and "one number per example" in result["warnings"][0]
    _assert_json_ready(result)


def test_level_plus_two_orthogonal_shapes_known_shares():
    result = trajectory_diagnostics(_levels_and_two_shapes())
    assert result["total_variance"] == pytest.approx(4.5)
    assert result["level_share"] == pytest.approx(8 / 9)
    assert result["shape_share"] == pytest.approx(1 / 9)
    assert result["pc_shares"] == pytest.approx([8 / 9, 1 / 9, 0, 0], abs=1e-12)
    assert result["pc1_share"] == pytest.approx(8 / 9)
    assert result["pc1_level_correlation"] == pytest.approx(1.0)
    assert result["pc1_final_correlation"] == pytest.approx(math.sqrt(8 / 9))
    assert result["warnings"] == []


def test_shares_are_shift_invariant_and_sum_to_one():
    rng = np.random.default_rng(1)
    losses = rng.normal(0, 1, (300, 5)) @ rng.normal(0, 1, (5, 5))
    near = trajectory_diagnostics(losses)
    # Losses far from zero compared with their spread: the shifted accumulation keeps them.
    far = trajectory_diagnostics(losses + 1e4)
    for key in ("pc1_share", "shape_share", "pc1_level_correlation", "pc1_final_correlation"):
        assert far[key] == pytest.approx(near[key], rel=1e-7, abs=1e-9)
    assert near["level_share"] + near["shape_share"] == pytest.approx(1.0)
    assert sum(near["pc_shares"]) == pytest.approx(1.0)


def test_matches_a_direct_computation_in_chunks_and_on_a_memory_map(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    losses = (rng.uniform(1, 3, (103, 1)) + rng.normal(0, 0.3, (103, 7))).astype(np.float32)
    x = losses.astype(np.float64)
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / len(x)
    variances, vectors = np.linalg.eigh(cov)
    pc1 = vectors[:, -1] * np.sign(vectors[:, -1].sum())
    scores, level = centred @ pc1, x.mean(axis=1)
    shape = x - level[:, None]
    expected = {
        "pc1_share": variances[-1] / variances.sum(),
        "shape_share": ((shape - shape.mean(axis=0)) ** 2).sum() / (centred**2).sum(),
        "pc1_level_correlation": np.corrcoef(scores, level)[0, 1],
        "pc1_final_correlation": np.corrcoef(scores, x[:, -1])[0, 1],
    }

    path = tmp_path / "losses.npy"
    np.save(path, losses)
    monkeypatch.setattr(diagnostics, "_CHUNK_ROWS", 10)  # 11 chunks, the last one short
    mapped = trajectory_diagnostics(np.load(path, mmap_mode="r"))
    for key, value in expected.items():
        assert mapped[key] == pytest.approx(value, rel=1e-9), key
    monkeypatch.setattr(diagnostics, "_CHUNK_ROWS", 1000)
    whole = trajectory_diagnostics(losses)
    for key in ("pc_shares", "mean_trajectory", *expected):
        assert whole[key] == pytest.approx(mapped[key], rel=1e-9), key


# --------------------------------------------------------------------------------------------
# clusters: sizes and NMI with sources and lengths


def test_nmi_is_one_when_clusters_are_the_sources():
    losses = _levels_and_two_shapes()
    sources = np.array(["gsm8k", "math", "svamp", "aqua"])[np.arange(80) % 4]
    labels = np.arange(80) % 4 + 10  # any label values
    result = trajectory_diagnostics(losses, labels=labels, sources=sources)
    assert result["nmi_source"] == pytest.approx(1.0)
    assert result["nmi_length"] is None
    assert result["clusters"] == {
        "n_clusters": 4,
        "size_min": 20,
        "size_median": 20.0,
        "size_max": 20,
        "n_tiny": 0,
        "largest_share": 0.25,
    }
    _assert_json_ready(result)


def test_nmi_is_zero_for_independent_columns_and_one_for_length_clusters():
    n = 100
    labels = np.arange(n) % 2
    sources = np.where(np.arange(n) < n // 2, "a", "b")  # every source half of each cluster
    lengths = np.where(labels == 0, 20, 900) + np.arange(n) % 3  # clusters split by length
    result = trajectory_diagnostics(
        np.random.default_rng(0).random((n, 3)),
        labels=labels,
        sources=sources,
        lengths=lengths,
    )
    assert result["nmi_source"] == pytest.approx(0.0, abs=1e-12)
    # Deciles cut each cluster's lengths further, which only lowers the NMI below 1...
    assert 0.3 < result["nmi_length"] < 1.0
    # ...with two bins the bins are the clusters.
    two_bins = trajectory_diagnostics(
        np.random.default_rng(0).random((n, 3)), labels=labels, lengths=lengths, n_length_bins=2
    )
    assert two_bins["nmi_length"] == pytest.approx(1.0)


def test_cluster_facts_count_tiny_clusters():
    labels = np.array([0, 0, 0, 1, 1, 5])
    result = trajectory_diagnostics(np.random.default_rng(0).random((6, 4)), labels=labels)
    assert result["clusters"] == {
        "n_clusters": 3,
        "size_min": 1,
        "size_median": 2.0,
        "size_max": 3,
        "n_tiny": 2,
        "largest_share": 0.5,
    }
    assert result["nmi_source"] is None


# --------------------------------------------------------------------------------------------
# degenerate inputs: no NaN, a plain warning


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_examples(n):
    result = trajectory_diagnostics(
        np.ones((n, 5), dtype=np.float32), labels=np.zeros(n, dtype=int), sources=["a"] * n
    )
    assert result["n_examples"] == n
    assert result["pc1_share"] is None and result["shape_share"] is None
    assert any("no variation between examples" in w for w in result["warnings"])
    _assert_json_ready(result)


def test_identical_trajectories():
    losses = np.tile(np.array([3.0, 2.0, 1.5, 1.4], dtype=np.float32), (50, 1))
    result = trajectory_diagnostics(losses, labels=np.zeros(50, dtype=int))
    assert result["total_variance"] == 0.0
    assert result["pc1_share"] is None and result["pc1_level_correlation"] is None
    assert len(result["warnings"]) == 1
    assert "all 50 trajectories are identical" in result["warnings"][0]
    assert result["clusters"]["n_clusters"] == 1
    _assert_json_ready(result)


def test_single_checkpoint():
    losses = np.random.default_rng(0).random((40, 1))
    result = trajectory_diagnostics(losses)
    assert result["pc1_share"] == pytest.approx(1.0)
    assert result["shape_share"] == pytest.approx(0.0, abs=1e-12)
    assert result["pc1_final_correlation"] == pytest.approx(1.0)
    assert len(result["warnings"]) == 1 and "single checkpoint" in result["warnings"][0]
    _assert_json_ready(result)


def test_bad_inputs_fail_with_a_clear_message():
    good = np.ones((4, 3))
    with pytest.raises(S2LError, match="2-D"):
        trajectory_diagnostics(np.ones(4))
    with pytest.raises(S2LError, match="no checkpoints"):
        trajectory_diagnostics(np.ones((4, 0)))
    with pytest.raises(S2LError, match="real numbers"):
        trajectory_diagnostics(np.array([["a", "b"]]))
    bad = good.copy()
    bad[2, 1] = np.nan
    with pytest.raises(S2LError, match="row 2 is not finite"):
        trajectory_diagnostics(bad)
    with pytest.raises(S2LError, match=r"sources must have shape \(4,\)"):
        trajectory_diagnostics(good, sources=["a", "b"])
    with pytest.raises(S2LError, match="n_length_bins"):
        trajectory_diagnostics(good, labels=np.zeros(4, int), lengths=np.ones(4), n_length_bins=0)
    with pytest.raises(S2LError, match="lengths must be numbers"):
        trajectory_diagnostics(good, labels=np.zeros(4, int), lengths=np.array(list("abcd")))
