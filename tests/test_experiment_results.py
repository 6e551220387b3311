"""results.csv, its report and its plot, from a hand-written results file (no models)."""

from __future__ import annotations

import pytest

from smalltolarge.errors import S2LError
from smalltolarge.experiment.results import (
    RESULT_COLUMNS,
    plot_results,
    read_results,
    write_results,
    write_table,
)


def _row(method: str, budget: str, seed: str, value: float, metric: str = "exact_match") -> dict:
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "n_train": "0" if method == "base" else "10",
        "metric": metric,
        "value": f"{value:.6g}",
        "ci_low": f"{value - 0.1:.6g}",
        "ci_high": f"{value + 0.1:.6g}",
        "n_eval": "20",
        "source": "all",
        "train_seconds": "1.0",
        "eval_seconds": "1.0",
        "wall_seconds": "2.0",
    }


ROWS = [
    _row("s2l", "0.5", "0", 0.4),
    _row("s2l", "0.5", "1", 0.6),
    _row("full-pool", "1.0", "0", 0.7),
    _row("random", "0.25", "0", 0.3),
    _row("s2l", "0.25", "0", 0.35),
    _row("s2l", "0.5", "0", 2.5, "loss"),
]


def test_results_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "out" / "results.csv"
    assert read_results(path) == []
    write_results(path, ROWS)
    assert read_results(path) == ROWS
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(RESULT_COLUMNS)
    write_results(path, ROWS[:2])  # replaced whole, not appended
    assert read_results(path) == ROWS[:2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.csv"]


def test_results_of_another_version_are_refused(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("method,budget,value\ns2l,0.1,0.5\n", encoding="utf-8")
    with pytest.raises(S2LError, match="not a results file of this version"):
        read_results(path)


def test_table_orders_methods_and_budgets_and_gives_the_std(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path, ROWS)
    table = write_table(path, command="s2l experiment x.yaml")
    exact, loss = table.split("loss (nats per response token, lower is better)")
    rows = [line.split("|")[1:3] for line in exact.splitlines() if line.startswith("| ")][1:]
    assert [(m.strip(), b.strip()) for m, b in rows] == [
        ("s2l", "0.25"),
        ("s2l", "0.5"),
        ("random", "0.25"),
        ("full-pool", "all"),
    ]
    # s2l at 0.5: mean 0.5, sample std over the two seeds 0.141, CI bounds averaged
    assert "| s2l | 0.5 | 10 | 0.500 ± 0.141 | [0.400, 0.600] | 2 |" in exact
    assert "| s2l | 0.5 | 10 | 2.500 | [2.400, 2.600] | 1 |" in loss
    assert table.endswith("Produced by `s2l experiment x.yaml`.\n")


def test_plot_is_a_png_written_in_place(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path, ROWS)
    png = plot_results(path, tmp_path / "plots" / "results.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["results.png"]


def test_no_results_yet_is_an_error(tmp_path):
    with pytest.raises(S2LError, match="no results yet"):
        write_table(tmp_path / "results.csv")
