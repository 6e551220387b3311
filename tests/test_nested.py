"""Nested budgets: every prefix of the ranking is a water-filled selection, subsets nest."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from smalltolarge.cli import main
from smalltolarge.nested import ORDER_FILE, nested_order, select_nested
from smalltolarge.selection import water_fill


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_prefix_has_the_water_filling_quotas(seed):
    # uneven clusters with ties in size (3 of 1 row, 2 of 7, 2 of 20) and one large
    sizes = np.array([1, 7, 20, 1, 7, 55, 20, 1, 3])
    labels = np.random.default_rng(99).permutation(np.repeat(np.arange(len(sizes)), sizes))
    order = nested_order(labels, np.random.default_rng(seed))
    assert sorted(order.tolist()) == list(range(len(labels)))
    for k in range(len(labels) + 1):
        counts = np.bincount(labels[order[:k]], minlength=len(sizes))
        # water_fill draws its visit order first from the rng, as nested_order does
        expected = water_fill(sizes, k, np.random.default_rng(seed))
        assert counts.tolist() == expected.tolist(), k


def test_outlier_clusters_come_last():
    sizes = np.array([2, 10, 1, 12])
    labels = np.repeat(np.arange(4), sizes)
    order = nested_order(labels, np.random.default_rng(0), outlier_max_size=2)
    inliers = sizes.copy()
    inliers[[0, 2]] = 0
    for k in range(23):  # 22 rows outside the outlier clusters
        counts = np.bincount(labels[order[:k]], minlength=4)
        assert counts.tolist() == water_fill(inliers, k, np.random.default_rng(0)).tolist()
    assert set(labels[order[22:]].tolist()) == {0, 2}


def test_select_nested_writes_nested_selections(run_copy):
    results = select_nested(run_copy, ["0.1", "0.3", "20"], seed=0, n_clusters=5)
    small, large, twenty = (set(r.ids) for r in results)
    assert len(small) == 12 and len(large) == 36 and len(twenty) == 20
    assert small <= twenty <= large
    order = (results[1].directory / ORDER_FILE).read_text().splitlines()
    assert len(order) == results[1].summary["n_scorable"]
    for r in results:
        assert set(order[: len(r.ids)]) == set(r.ids)
        assert (r.directory / ORDER_FILE).read_text().splitlines() == order
        clusters = r.summary["clusters"]
        assert sum(clusters["taken"]) == len(r.ids)
        assert r.summary["nested"]["counts"] == [12, 36, 20]
        assert r.subset_path.read_text().count("\n") == len(r.ids)


def test_cli_comma_separated_budgets(monkeypatch, capsys, run_copy):
    args = ["s2l", "select", "--run-dir", str(run_copy.root), "--clusters", "4"]
    monkeypatch.setattr(sys, "argv", [*args, "--budget", "0.05,0.2"])
    with pytest.raises(SystemExit) as done:
        main()
    assert not done.value.code
    out = capsys.readouterr().out
    a = run_copy.selection_dir("s2l-nested-seed0-0.05") / "ids.txt"
    b = run_copy.selection_dir("s2l-nested-seed0-0.2") / "ids.txt"
    assert set(a.read_text().split()) <= set(b.read_text().split())
    assert ORDER_FILE in out

    monkeypatch.setattr(sys, "argv", [*args, "--budget", "0.1,0.2", "--method", "random"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    assert "nested budgets" in capsys.readouterr().err


def test_given_positions_rank_inside_each_group():
    # two groups; inside each, the given ranks are kept: every prefix takes each group's
    # lowest ranks first, in water-filling counts
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    positions = np.array([2, 0, 1, 4, 3, 2, 1, 0])
    order = nested_order(groups, np.random.default_rng(0), positions=positions)
    for k in range(len(groups) + 1):
        prefix = order[:k]
        counts = np.bincount(groups[prefix], minlength=2)
        assert counts.tolist() == water_fill([3, 5], k, np.random.default_rng(0)).tolist()
        for g in (0, 1):
            assert sorted(positions[prefix][groups[prefix] == g]) == list(range(counts[g]))


def test_per_source_nested_selections(run_copy):
    from smalltolarge.data import load_saved_pool

    results = select_nested(run_copy, ["0.1", "0.3"], seed=0, n_clusters=3, stratify_by="source")
    small, large = (set(r.ids) for r in results)
    assert small <= large and len(small) == 12 and len(large) == 36
    assert results[0].directory.name == "s2l-nested-stratified-seed0-0.1"
    dataset = load_saved_pool(run_copy).dataset
    source_of = dict(zip(dataset["id"], dataset["source"], strict=True))
    selectable = (results[0].directory / ORDER_FILE).read_text().splitlines()
    names = sorted({source_of[i] for i in selectable})
    sizes = np.array([sum(source_of[i] == name for i in selectable) for name in names])
    for r in results:
        taken = np.array([sum(source_of[i] == name for i in r.ids) for name in names])
        quotas = r.summary["source_quotas"]
        assert [quotas[name] for name in names] == taken.tolist()
        # water-filled over sources (up to the order among equal-size sources)
        expected = water_fill(sizes, len(r.ids))
        assert np.abs(taken - expected).max() <= 1 and taken.sum() == expected.sum()
