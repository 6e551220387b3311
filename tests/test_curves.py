"""Learning-curve fits on synthetic experiment results with a known curve."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from smalltolarge.cli import main
from smalltolarge.curves import curves_markdown, fit_learning_curves, write_learning_curves
from smalltolarge.errors import S2LError
from smalltolarge.experiment import RESULT_COLUMNS

N_FULL = 1000
FULL = 0.60
# seed offsets that average to zero: the seed means lie exactly on the curve
OFFSETS = (-0.004, 0.0, 0.004)


def _write(path, curves: dict[str, tuple[float, float]], budgets, metric="exact_match",
           full=FULL, lower=False):  # fmt: skip
    """results.csv where method m scores full -/+ b * (x^-c - 1) at each budget x."""
    rows = []

    def add(method, budget, n, value, seed):
        row = dict.fromkeys(RESULT_COLUMNS, "0")
        row.update(method=method, budget=str(budget), seed=str(seed), n_train=str(n),
                   metric=metric, value=f"{value:.6f}", source="all")  # fmt: skip
        rows.append(row)
        rows.append({**row, "source": "some_source"})  # per-source rows are ignored

    for seed, off in enumerate(OFFSETS):
        add("full-pool", 1.0, N_FULL, full + off, seed)
        for method, (b, c) in curves.items():
            for x in budgets:
                shortfall = b * (x**-c - 1)
                add(method, x, round(x * N_FULL), full + (shortfall if lower else -shortfall) + off,
                    seed)  # fmt: skip
    add("base", 0, 0, 0.05, "")
    add("single", 0.3, 300, 0.5, 0)
    with open(path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_recovers_a_known_curve_and_the_budget_needed(tmp_path):
    b, c = 0.05, 0.8
    _write(tmp_path, {"s2l": (b, c)}, budgets=(0.05, 0.1, 0.2, 0.4))
    fits = {f.method: f for f in fit_learning_curves(tmp_path, resamples=300)}
    assert set(fits) == {"s2l", "single"}  # base and full-pool are not methods
    fit = fits["s2l"]
    assert fit.b == pytest.approx(b, rel=0.02) and fit.c == pytest.approx(c, rel=0.02)
    truth = (1 + 0.01 / b) ** (-1 / c)  # 0.796: between the largest budget and the full pool
    assert fit.x_needed == pytest.approx(truth, rel=0.02)
    assert fit.n_needed == int(np.ceil(fit.x_needed * N_FULL))
    lo, hi = fit.x_interval
    assert lo is not None and hi is not None and lo <= truth <= hi
    assert fit.predict(0.1) == pytest.approx(FULL - b * (0.1**-c - 1), abs=1e-3)
    assert "one budget" in fits["single"].note and fits["single"].x_needed is None


def test_refuses_to_extrapolate_below_the_smallest_budget(tmp_path):
    # a tiny shortfall: within 1 point of the full pool far below the smallest budget
    _write(tmp_path, {"flat": (0.001, 0.5)}, budgets=(0.2, 0.5))
    fit = next(f for f in fit_learning_curves(tmp_path, resamples=100) if f.method == "flat")
    assert fit.x_needed is None
    assert "extrapolation" in fit.note and "0.2" in fit.note


def test_flags_a_budget_read_across_an_unmeasured_gap(tmp_path):
    # measured at 5% and 10% only: the budget needed (~0.8) lies in the gap up to the full pool
    b, c = 0.05, 0.8
    _write(tmp_path, {"s2l": (b, c)}, budgets=(0.05, 0.1))
    fit = next(f for f in fit_learning_curves(tmp_path, resamples=100) if f.method == "s2l")
    assert fit.x_needed == pytest.approx((1 + 0.01 / b) ** (-1 / c), rel=0.05)
    assert fit.note.startswith("interpolated") and "0.1 of the pool" in fit.note
    assert f"~{fit.x_needed:.3g}" in curves_markdown([fit])


def test_loss_metric_uses_a_relative_tolerance(tmp_path):
    b, c = 0.3, 0.5
    _write(tmp_path, {"s2l": (b, c)}, budgets=(0.1, 0.3, 0.6), metric="loss", full=2.0,
           lower=True)  # fmt: skip
    fit = next(f for f in fit_learning_curves(tmp_path, resamples=100) if f.method == "s2l")
    assert fit.tolerance == pytest.approx(0.02)  # 1% of the full pool's loss
    assert fit.x_needed == pytest.approx((1 + 0.02 / b) ** (-1 / c), rel=0.03)
    assert fit.predict(0.1) > fit.predict(0.6) > fit.full_value  # loss falls with data


def test_writes_table_and_plot_and_cli(monkeypatch, capsys, tmp_path):
    _write(tmp_path, {"s2l": (0.05, 0.8), "random": (0.08, 0.6)}, budgets=(0.1, 0.3))
    fits, md, png = write_learning_curves(tmp_path, resamples=50)
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert "| exact_match | s2l | 0.1, 0.3 |" in text
    monkeypatch.setattr(sys, "argv", ["s2l", "curve", str(tmp_path), "--tolerance", "0.02"])
    with pytest.raises(SystemExit) as done:
        main()
    assert not done.value.code
    out = capsys.readouterr().out
    assert "| 0.02 |" in out and "learning_curves.png" in out


def test_needs_a_full_pool_run(tmp_path):
    _write(tmp_path, {"s2l": (0.05, 0.8)}, budgets=(0.1, 0.3))
    with pytest.raises(S2LError, match="no full-pool run"):
        fit_learning_curves(tmp_path, metric="rouge_l")
    with pytest.raises(S2LError, match="missing: does not exist"):
        fit_learning_curves(tmp_path / "missing")
