"""Tests for smalltolarge.intervals: the Wilson and bootstrap intervals and summarise()."""

from __future__ import annotations

import math

import pytest

from smalltolarge.intervals import bootstrap_interval, summarise, wilson_interval


def test_wilson_interval_matches_a_hand_computation():
    # 8/10, z = 1.96: centre = (0.8 + z²/20) / (1 + z²/10) = 0.716740,
    # half-width = z * sqrt(0.8 * 0.2 / 10 + z²/400) / (1 + z²/10) = 0.226578
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-6)
    assert high == pytest.approx(0.943318, abs=1e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-6), 1.0)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    values = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.55, 0.6]
    low, high = bootstrap_interval(values)
    assert (low, high) == bootstrap_interval(values)
    assert low < sum(values) / len(values) < high
    assert bootstrap_interval([0.5] * 5) == (0.5, 0.5)


def test_summarise_uses_wilson_for_exact_match():
    summary = summarise([1.0] * 8 + [0.0] * 2, "exact_match")
    assert summary["mean"] == pytest.approx(0.8)
    assert summary["n"] == 10
    assert (summary["ci_low"], summary["ci_high"]) == wilson_interval(8, 10)
