"""Paired comparisons on hand-made per-item result files with known answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from smalltolarge.compare import (
    COMPARISON_COLUMNS,
    comparisons,
    comparisons_markdown,
    detectable_difference,
    detectable_differences,
    paired_difference,
    run_name,
    separation_warnings,
    verdict,
    write_comparisons,
)
from smalltolarge.errors import S2LError
from smalltolarge.experiment import RESULT_COLUMNS

N = 100


def _correct(n_right: int, offset: int = 0) -> np.ndarray:
    """1.0 on items offset .. offset + n_right - 1 (mod N), 0.0 elsewhere."""
    values = np.zeros(N)
    values[(np.arange(n_right) + offset) % N] = 1.0
    return values


def _write_run(out: Path, method: str, budget: str, seed: str, values, *, metric="exact_match"):
    """One run's per-item file (lines in reverse id order: matching must go by id) and row."""
    directory = out / "eval" / run_name(method, budget, seed)
    directory.mkdir(parents=True, exist_ok=True)
    field, name = ("loss", "losses.jsonl") if metric == "loss" else ("score", "predictions.jsonl")
    lines = [
        json.dumps({"id": f"item-{i:03d}", "source": "s", field: float(v)})
        for i, v in enumerate(values)
    ]
    (directory / name).write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    row = dict.fromkeys(RESULT_COLUMNS, "0")
    row.update(method=method, budget=budget, seed=seed, metric=metric, source="all",
               value=str(np.mean(values)), n_train="10" if method != "full-pool" else "100",
               n_eval=str(len(values)))  # fmt: skip
    return row


def _write_csv(out: Path, rows: list[dict]) -> None:
    with open(out / "results.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_sixty_against_fifty_is_exactly_ten_points_ahead():
    method, random = _correct(60), _correct(50)
    diff = paired_difference(method, random, seed=0)
    assert diff.mean == pytest.approx(0.10, abs=1e-12)
    assert diff.ci_low < 0.10 < diff.ci_high
    # the 10 discordant items all favour the method: the paired interval stays above 0
    assert diff.ci_low > 0 and (diff.n_items, diff.n_seeds) == (N, 1)
    assert verdict(diff) == "ahead"
    assert paired_difference(method, random, seed=0) == diff  # deterministic for its seed
    # the normal approximation of 10 discordant +1's in 100: 0.10 ± 1.96 * 0.03
    assert diff.ci_low == pytest.approx(0.04, abs=0.015)
    assert diff.ci_high == pytest.approx(0.16, abs=0.015)
    # as a loss (lower is better) the same numbers mean behind
    assert verdict(diff, lower_is_better=True) == "behind"


def test_unpaired_disagreement_is_level():
    # 60 vs 50 correct, but on disjoint-ish items: 50 discordant pairs, no clear winner
    diff = paired_difference(_correct(60, offset=40), _correct(50))
    assert diff.mean == pytest.approx(0.10, abs=1e-12)
    assert diff.ci_low < 0 < diff.ci_high
    assert verdict(diff) == "level"


def test_seeds_are_paired_and_resampled():
    method = np.stack([_correct(60), _correct(56)])
    random = np.stack([_correct(50), _correct(52)])
    diff = paired_difference(method, random)
    assert diff.mean == pytest.approx(0.07, abs=1e-12)
    assert diff.n_seeds == 2 and diff.ci_low < 0.07 < diff.ci_high
    with pytest.raises(S2LError, match="shape"):
        paired_difference(method, random[:, :50])


def test_detectable_difference_is_random_against_random():
    seeds = np.stack([_correct(50), _correct(50, offset=20)])
    expected = paired_difference(seeds, seeds[::-1]).half_width  # seed 0 with 1, 1 with 0
    assert detectable_difference(seeds) == pytest.approx(expected)
    assert 0.05 < expected < 0.2
    assert detectable_difference(seeds[:1]) is None


def test_detectable_difference_holds_the_seed_spread():
    """Three random runs that agree item by item up to a shift per run (training noise): the
    items-only interval between two of them is ~0 wide, but a method compared with random
    over these seeds cannot resolve less than the runs' spread."""
    base = np.linspace(0.0, 1.0, N)
    seeds = np.stack([base, base + 0.2, base + 0.1])
    assert paired_difference(seeds[0], seeds[1]).half_width < 1e-9
    # per-seed differences to the next seed: -0.1, +0.2, -0.1; their resampled means span
    # [-0.1, +0.2] at the 2.5% and 97.5% quantiles
    assert detectable_difference(seeds) == pytest.approx(0.15)


def test_comparisons_from_the_results_directory_alone(tmp_path):
    rows = [
        _write_run(tmp_path, "s2l", "0.1", "0", _correct(60)),
        _write_run(tmp_path, "random", "0.1", "0", _correct(50)),
        _write_run(tmp_path, "random", "0.1", "1", _correct(50, offset=20)),
        _write_run(tmp_path, "full-pool", "1.0", "0", _correct(55)),
        _write_run(tmp_path, "s2l", "0.1", "0", np.linspace(1, 2, N), metric="loss"),
        _write_run(tmp_path, "random", "0.1", "0", np.linspace(1, 2, N) + 0.25, metric="loss"),
    ]
    _write_csv(tmp_path, rows)
    found = {(r["method"], r["metric"], r["baseline"]): r for r in comparisons(tmp_path)}
    assert set(found) == {
        ("s2l", "exact_match", "random"),
        ("s2l", "exact_match", "full-pool"),
        ("random", "exact_match", "full-pool"),
        ("s2l", "loss", "random"),
    }
    vs_random = found["s2l", "exact_match", "random"]
    assert float(vs_random["difference"]) == pytest.approx(0.10)  # seed 0 with seed 0 only
    assert vs_random["verdict"] == "ahead" and vs_random["n_seeds"] == "1"
    assert float(found["s2l", "exact_match", "full-pool"]["difference"]) == pytest.approx(0.05)
    random_vs_full = found["random", "exact_match", "full-pool"]
    assert random_vs_full["n_seeds"] == "2"  # both random seeds against the one full-pool run
    loss = found["s2l", "loss", "random"]
    assert float(loss["difference"]) == pytest.approx(-0.25) and loss["verdict"] == "ahead"

    path = write_comparisons(tmp_path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COMPARISON_COLUMNS
        assert list(reader) == comparisons(tmp_path)

    [detectable] = detectable_differences(tmp_path)
    assert detectable["budget"] == "0.1" and detectable["n_seeds"] == "2"
    assert float(detectable["detectable"]) == pytest.approx(
        detectable_difference(np.stack([_correct(50), _correct(50, offset=20)])), rel=1e-5
    )
    # random 0.5 -> full pool 0.55 is less than twice the detectable difference
    [warning] = separation_warnings(tmp_path)
    assert "exact_match" in warning and "cannot separate" in warning
    report = comparisons_markdown(tmp_path)
    assert "## Paired differences" in report and "| s2l | 0.1 | exact_match | random |" in report
    assert "## Detectable difference" in report and warning in report


def test_flat_curve_without_the_full_pool_warns_from_the_largest_budget(tmp_path):
    """No full-pool run: random's curve from its smallest to its largest budget is what must
    rise by twice the detectable difference."""
    base = np.linspace(1.0, 2.0, N)
    rows = []
    for budget, n_train, shift in (("0.05", "145", 0.0), ("0.1", "290", -0.02)):
        for seed, noise in (("0", 0.0), ("1", 0.1), ("2", 0.05)):
            row = _write_run(tmp_path, "random", budget, seed, base + shift + noise, metric="loss")
            rows.append({**row, "n_train": n_train})
    _write_csv(tmp_path, rows)
    [warning] = separation_warnings(tmp_path)
    assert "from random at budget 0.05 to random at budget 0.1" in warning
    assert "cannot separate" in warning
