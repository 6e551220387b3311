"""Targeted S2L: quotas shifted toward the clusters a target set falls in."""

from __future__ import annotations

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.selection import S2LSelector, Signals
from smalltolarge.selection.targeted import (
    assign_to_centroids,
    proportional_quotas,
    targeted_quotas,
)

from .conftest import assert_valid_selection

SOURCES = ("a", "b", "c", "d")


def _pool(seed: int = 0, per_source: int = 120, t: int = 6):
    """Trajectories of four sources with distinct learning curves (a cluster holds one source),
    and a target set of 30 fresh examples drawn like source ``c``."""
    rng = np.random.default_rng(seed)
    curves = {
        s: np.linspace(start, end, t)
        for s, (start, end) in zip(SOURCES, [(6, 1), (6, 4), (3, 2.5), (8, 7.5)], strict=True)
    }
    rows, sources = [], []
    for s in SOURCES:
        rows.append(curves[s] + rng.normal(0, 0.15, (per_source, t)))
        sources += [s] * per_source
    target = curves["c"] + rng.normal(0, 0.15, (30, t))
    return np.vstack(rows).astype(np.float32), np.asarray(sources), target.astype(np.float32)


def _signals(losses, sources, target=None, weight=0.5) -> Signals:
    return Signals(
        losses=losses,
        ids=np.arange(len(losses)),
        sources=sources,
        target_losses=target,
        target_weight=weight,
    )


def test_the_targeted_source_grows_monotonically_with_the_knob():
    losses, sources, target = _pool()
    budget, counts = 60, []
    for weight in (0.0, 0.25, 0.5, 0.75, 1.0):
        selector = S2LSelector(n_clusters=8)
        rows = selector.select(_signals(losses, sources, target, weight), budget, seed=0)
        assert_valid_selection(rows, len(losses), budget)
        counts.append(int((sources[rows] == "c").sum()))
        summary = selector.summary_()["targeted"]
        assert summary["target_weight"] == weight and summary["n_target"] == 30
        assert sum(summary["quotas_targeted"]) == sum(summary["quotas_plain"]) == budget
    plain = S2LSelector(n_clusters=8).select(_signals(losses, sources), budget, seed=0)
    assert counts[0] == int((sources[plain] == "c").sum())  # weight 0 is plain S2L
    assert counts == sorted(counts) and counts[-1] > counts[0]
    assert counts[-1] == budget  # fully target-weighted: only the target's clusters


def test_without_a_target_set_nothing_changes():
    losses, sources, _ = _pool(seed=1)
    selector = S2LSelector(n_clusters=8)
    rows = selector.select(_signals(losses, sources), 50, seed=2)
    assert "targeted" not in selector.summary_()
    np.testing.assert_array_equal(
        rows, S2LSelector(n_clusters=8).select(Signals(losses, np.arange(len(losses))), 50, 2)
    )


def test_quotas_stay_within_clusters_and_sum_to_the_budget():
    sizes = np.array([3, 50, 7, 0, 40])
    share = np.array([0.9, 0.0, 0.1, 0.0, 0.0])
    # a and c are capped at their sizes; the 10 rows left are water-filled over the others
    assert proportional_quotas(sizes, 20, share).tolist() == [3, 5, 7, 0, 5]
    for weight in (0.0, 0.3, 1.0):
        plain, quotas = targeted_quotas(sizes, 20, share, weight)
        assert quotas.sum() == plain.sum() == 20 and (quotas <= sizes).all()
    plain, quotas = targeted_quotas(sizes, 20, share, 0.0)
    np.testing.assert_array_equal(plain, quotas)
    with pytest.raises(S2LError, match="target_weight"):
        targeted_quotas(sizes, 20, share, 1.5)


def test_targets_go_to_the_nearest_centroid():
    centroids = np.array([[0.0, 0.0], [10.0, 10.0]])
    x = np.array([[1.0, 0.5], [9.0, 11.0], [4.0, 4.0]])
    assert assign_to_centroids(x, centroids).tolist() == [0, 1, 0]


def test_bad_target_sets_are_refused():
    losses, sources, target = _pool()
    with pytest.raises(S2LError, match=r"shape \(m >= 1, 6\)"):
        _signals(losses, sources, target[:, :3])
    with pytest.raises(S2LError, match="target_weight"):
        _signals(losses, sources, target, weight=-0.1)
    bad = target.copy()
    bad[0, 0] = np.nan
    with pytest.raises(S2LError, match="not finite"):
        _signals(losses, sources, bad)
    with pytest.raises(S2LError, match="outlier_max_size"):
        S2LSelector(n_clusters=8, outlier_max_size=2).select(
            _signals(losses, sources, target), 40, seed=0
        )


def _target_file(tmp_path, source: str, n: int = 20):
    """``n`` held-out demo eval items of one source (none of them is in the pool)."""
    import json

    from smalltolarge.demo_data import DEMO_EVAL

    rows = [json.loads(line) for line in DEMO_EVAL.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / "target.jsonl"
    chosen = [r for r in rows if r["source"] == source][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
    return path


def test_a_target_set_moves_the_quotas_toward_its_clusters(run_copy, tmp_path, capsys):
    """On a real run: the target set is scored at the kept checkpoints and the share of the
    subset in the target's clusters grows with the knob. (The tiny test proxy, 2 epochs on 120
    examples, spreads one source over several mixed clusters, so the source count itself is
    not monotone here; the synthetic pool above, whose clusters are sources, shows that.)"""
    from smalltolarge.subset import select_subset

    target = _target_file(tmp_path, "chain_sum")
    mass, names = [], set()
    for weight in (0.0, 0.5, 1.0):
        result = select_subset(
            run_copy, method="s2l", budget=30, n_clusters=6, seed=0,
            target_set=target, target_weight=weight,
        )  # fmt: skip
        summary = result.summary
        assert summary["settings"]["target_weight"] == weight
        assert summary["settings"]["target_set"] == str(target)
        targeted = summary["targeted"]
        assert targeted["n_target"] == 20 and sum(targeted["quotas_targeted"]) == 30
        assert summary["clusters"]["taken"] == targeted["quotas_targeted"]
        share = np.asarray(targeted["target_share"])
        mass.append(float(share @ np.asarray(targeted["quotas_targeted"])))
        names.add(result.directory.name)
    plain = select_subset(run_copy, method="s2l", budget=30, n_clusters=6, seed=0)
    assert "targeted" not in plain.summary and plain.directory.name not in names
    from smalltolarge.report import print_selection_summary

    print_selection_summary(summary)  # the printed summary says how the quotas moved
    assert f"{targeted['moved']} of 30 rows moved" in capsys.readouterr().out
    assert mass == sorted(mass) and mass[-1] > mass[0]


def test_a_target_set_needs_global_s2l(run_copy, tmp_path):
    from smalltolarge.subset import select_subset

    target = _target_file(tmp_path, "gcd")
    with pytest.raises(S2LError, match="target set steers plain S2L"):
        select_subset(run_copy, method="random", budget=10, target_set=target)
    with pytest.raises(S2LError, match="target_weight"):
        select_subset(run_copy, budget=10, target_set=target, target_weight=2.0)
