"""Paired comparisons of experiment runs: is a method ahead of random, and can the setup tell?

Two runs evaluated on the same items differ far less in their per-item difference than their
two scores' intervals suggest, because most items are easy or hard for both. So every
comparison here is paired: method seed s against random seed s at the same budget, items
matched by id; the mean difference (method - baseline) gets a 95% percentile bootstrap interval
that resamples items and, with two seeds or more, seeds too (:func:`paired_difference`). The
verdict is ``ahead`` when the interval excludes 0 on the method's better side (lower for the
``loss`` metric, higher otherwise), ``behind`` when it excludes 0 on the other, else ``level``.

The smallest difference a setup can detect at a budget is the half-width of the interval such
a comparison gets when the "method" is random itself (:func:`detectable_difference`): each
random seed paired with another random seed, items and seeds resampled. Random subsets (and
training runs) differ by chance alone, so a method must beat random by more than that to be
told apart. It includes the seed-to-seed spread, which dominates when fine-tuning is noisy.

Everything is computed from an experiment's output directory alone (see
:mod:`smalltolarge.experiment`): ``results.csv`` names the runs, ``eval/<run>/predictions.jsonl``
(``score`` per item) and ``eval/<run>/losses.jsonl`` (``loss`` per item) hold the per-item
results. :func:`comparisons` and :func:`detectable_differences` re-make the tables;
:func:`write_comparisons` writes ``comparisons.csv``; :func:`comparisons_markdown` the report
section.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.runs import atomic_write_text

__all__ = [
    "BASE",
    "COMPARISON_COLUMNS",
    "FULL_POOL",
    "LOWER_IS_BETTER",
    "RANDOM",
    "PairedDifference",
    "calibration_markdown",
    "comparisons",
    "comparisons_markdown",
    "detectable_difference",
    "detectable_differences",
    "learning_curve",
    "paired_difference",
    "read_item_values",
    "run_name",
    "separation_warnings",
    "verdict",
    "write_comparisons",
]

#: ``method`` labels of results.csv with a fixed meaning: the fine-tuning on the whole pool, the
#: untrained target, and the baseline every method is compared with.
FULL_POOL = "full-pool"
BASE = "base"
RANDOM = "random"
#: Metrics where a lower value is better.
LOWER_IS_BETTER = frozenset({"loss"})
RESAMPLES = 2000
SEED = 0
COMPARISON_COLUMNS = (
    "method",
    "budget",
    "metric",
    "baseline",
    "difference",
    "ci_low",
    "ci_high",
    "verdict",
    "n_items",
    "n_seeds",
)
COMPARISONS_FILE = "comparisons.csv"
#: Per-item files of an eval directory, and the field holding each metric's value.
_ITEM_FILES = {"loss": ("losses.jsonl", "loss")}
_DEFAULT_ITEM_FILE = ("predictions.jsonl", "score")


@dataclass(frozen=True)
class PairedDifference:
    """Mean paired difference (method - baseline, in the metric's units) and its 95% interval,
    over ``n_items`` items and ``n_seeds`` seed pairs."""

    mean: float
    ci_low: float
    ci_high: float
    n_items: int
    n_seeds: int

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def run_name(method: str, budget: str, seed: str | int | None) -> str:
    """The directory name of a run under ``eval/`` and ``models/``: ``<label>-<budget>-seed<s>``,
    ``full-pool-seed<s>`` or ``base``."""
    if method == BASE:
        return BASE
    if method == FULL_POOL:
        return f"{FULL_POOL}-seed{seed}"
    return f"{method}-{budget}-seed{seed}"


def paired_difference(
    method: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
) -> PairedDifference:
    """The mean of ``method - baseline`` with a paired percentile bootstrap interval.

    Args:
        method, baseline: per-item values, float arrays of shape ``(n_items,)`` or
            ``(n_seeds, n_items)``; row s of one is paired with row s of the other, column i
            with column i (the same eval item). A baseline with one row is paired with every
            row of ``method`` (the full pool is trained once).
        resamples: bootstrap resamples; each draws ``n_items`` items with replacement and,
            when there are two seeds or more, ``n_seeds`` seeds with replacement.
        seed: seeds the bootstrap, so the interval is the same on every call.

    Returns:
        The :class:`PairedDifference`; the mean is over all seeds and items.
    """
    a = np.atleast_2d(np.asarray(method, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline, dtype=np.float64))
    if b.shape[0] == 1 and a.shape[0] > 1:
        b = np.broadcast_to(b, a.shape)
    if a.shape != b.shape:
        raise S2LError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    if a.shape[1] == 0:
        raise S2LError("no items to compare")
    diff = a - b  # (n_seeds, n_items)
    n_seeds, n_items = diff.shape
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    # Chunks bound the (chunk x n_items) count matrix whatever the eval set's size.
    chunk = max(1, 2_000_000 // n_items)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        item_counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=size)
        per_seed = item_counts @ diff.T / n_items  # (size, n_seeds)
        if n_seeds > 1:
            seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size)
            per_seed = per_seed * seed_counts / n_seeds
            draws[start : start + size] = per_seed.sum(axis=1)
        else:
            draws[start : start + size] = per_seed[:, 0]
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return PairedDifference(float(diff.mean()), float(low), float(high), n_items, n_seeds)


def verdict(difference: PairedDifference, *, lower_is_better: bool = False) -> str:
    """``ahead``, ``behind`` or ``level``: whether the interval excludes 0, and on which side."""
    if difference.ci_low > 0:
        return "behind" if lower_is_better else "ahead"
    if difference.ci_high < 0:
        return "ahead" if lower_is_better else "behind"
    return "level"


def detectable_difference(
    values: Sequence[Sequence[float]] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED
) -> float | None:
    """The smallest difference the setup can detect: the half-width of the interval that
    :func:`paired_difference` gives a comparison with these seeds when the method is random
    itself. Random seed s is paired with seed s+1 (the last with the first), and items and seeds
    are resampled as in every comparison, so the width holds both the item noise and the
    seed-to-seed spread of the runs (different subsets, different training order).

    An earlier definition, the half-width between two seeds with items resampled only, left the
    seed spread out; on a noisy fine-tune it understated what a comparison can resolve by 2-4x.

    Args:
        values: per-item values of random runs, float array of shape ``(n_seeds, n_items)``.

    Returns:
        The half-width in the metric's units, or None with fewer than two seeds.
    """
    rows = np.asarray(values, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 2:
        return None
    null = paired_difference(rows, np.roll(rows, 1, axis=0), resamples=resamples, seed=seed)
    return null.half_width


def read_item_values(eval_dir: str | os.PathLike, metric: str) -> dict[str, float] | None:
    """Per-item values of one run, ``{item id: value}``: ``loss`` from ``losses.jsonl``, any
    other metric's ``score`` from ``predictions.jsonl``. None when the file is absent."""
    name, key = _ITEM_FILES.get(metric, _DEFAULT_ITEM_FILE)
    path = Path(eval_dir) / name
    if not path.is_file():
        return None
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                values[str(row["id"])] = float(row[key])
    return values


def comparisons(
    out_dir: str | os.PathLike, *, resamples: int = RESAMPLES, seed: int = SEED
) -> list[dict[str, str]]:
    """Every method's paired difference to random (same budget) and to the full pool.

    For each (method label, budget, metric) of ``out_dir/results.csv``: against ``random`` at
    the same budget over the seeds both have, and against ``full-pool`` (its one run paired
    with each of the method's seeds); items are those both runs scored, matched by id. Rows
    have the keys :data:`COMPARISON_COLUMNS`, formatted as text; a comparison without per-item
    files or shared seeds is left out.
    """
    runs = _overall_runs(Path(out_dir))
    rows = []
    for (method, budget, metric), seeds in runs.items():
        if method in (BASE, FULL_POOL):
            continue
        targets = [] if method == RANDOM else [(RANDOM, budget)]
        targets.append((FULL_POOL, None))
        for baseline, baseline_budget in targets:
            key = (baseline, baseline_budget or _only_budget(runs, baseline, metric), metric)
            if key[1] is None or key not in runs:
                continue
            pair = _paired_values(Path(out_dir), method, budget, seeds, key, runs[key], metric)
            if pair is None:
                continue
            diff = paired_difference(*pair, resamples=resamples, seed=seed)
            word = verdict(diff, lower_is_better=metric in LOWER_IS_BETTER)
            rows.append(_comparison_row(method, budget, metric, baseline, diff, word))
    return rows


def detectable_differences(
    out_dir: str | os.PathLike, *, resamples: int = RESAMPLES, seed: int = SEED
) -> list[dict[str, str]]:
    """The detectable difference at every budget where random has two seeds or more.

    Rows ``{"budget", "metric", "detectable", "n_seeds", "n_items", "n_train"}`` (text), in
    the order of ``results.csv``; ``detectable`` is :func:`detectable_difference` over the
    random seeds' per-item values, matched by id.
    """
    out = Path(out_dir)
    rows = []
    for (method, budget, metric), seeds in _overall_runs(out).items():
        if method != RANDOM or len(seeds) < 2:
            continue
        loaded = [
            read_item_values(out / "eval" / run_name(method, budget, s), metric) for s in seeds
        ]
        if any(v is None for v in loaded):
            continue
        values = _stack([v for v in loaded if v is not None])
        if values.shape[1] == 0:
            continue
        width = detectable_difference(values, resamples=resamples, seed=seed)
        n_train = np.mean([int(r["n_train"]) for r in seeds.values()])
        rows.append(
            {
                "budget": budget,
                "metric": metric,
                "detectable": f"{width:.6g}",
                "n_seeds": str(len(seeds)),
                "n_items": str(values.shape[1]),
                "n_train": f"{n_train:.0f}",
            }
        )
    return rows


def learning_curve(out_dir: str | os.PathLike) -> dict[str, list[tuple[str, float, float]]]:
    """Random's overall metric against training size, and the full pool's, per metric.

    Returns ``{metric: [(budget, mean n_train, mean value over seeds), ...]}`` sorted by
    n_train, random's budgets first and the full pool (budget ``"all"``) last when it ran.
    """
    runs = _overall_runs(Path(out_dir))
    curves: dict[str, list[tuple[str, float, float]]] = {}
    for (method, budget, metric), seeds in runs.items():
        if method not in (RANDOM, FULL_POOL):
            continue
        n_train = float(np.mean([int(r["n_train"]) for r in seeds.values()]))
        value = float(np.mean([float(r["value"]) for r in seeds.values()]))
        label = "all" if method == FULL_POOL else budget
        curves.setdefault(metric, []).append((label, n_train, value))
    for points in curves.values():
        points.sort(key=lambda p: (p[0] == "all", p[1]))
    return curves


def separation_warnings(out_dir: str | os.PathLike, **kwargs: int) -> list[str]:
    """Plain-words warnings, one per metric, where random's learning curve from its smallest
    budget to the full pool (else, when the full pool did not run, to random's largest budget)
    improves by less than twice the largest detectable difference: such a setup cannot
    separate selection methods. ``kwargs`` go to :func:`detectable_differences`."""
    curves = learning_curve(out_dir)
    detectable: dict[str, float] = {}
    for row in detectable_differences(out_dir, **kwargs):
        metric, width = row["metric"], float(row["detectable"])
        detectable[metric] = max(detectable.get(metric, 0.0), width)
    warnings = []
    for metric, points in curves.items():
        if metric not in detectable or len(points) < 2:
            continue
        (_, _, smallest), (last, _, largest) = points[0], points[-1]
        end = "the full pool" if last == "all" else f"random at budget {last}"
        gain = smallest - largest if metric in LOWER_IS_BETTER else largest - smallest
        if gain < 2 * detectable[metric]:
            warnings.append(
                f"WARNING ({metric}): from random at budget {points[0][0]} to {end} the "
                f"{metric} improves by {gain:+.4g}, less than twice the detectable difference "
                f"({detectable[metric]:.4g}): this setup cannot separate selection methods; "
                "use more eval items or seeds, or budgets where the learning curve still climbs."
            )
    return warnings


def write_comparisons(out_dir: str | os.PathLike, **kwargs: int) -> Path:
    """Write ``out_dir/comparisons.csv`` (columns :data:`COMPARISON_COLUMNS`) from the results
    directory alone; returns its path. ``kwargs`` go to :func:`comparisons`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARISON_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparisons(out_dir, **kwargs))
    path = Path(out_dir) / COMPARISONS_FILE
    atomic_write_text(path, buffer.getvalue())
    return path


def comparisons_markdown(out_dir: str | os.PathLike, **kwargs: int) -> str:
    """The results.md sections on paired differences, detectable differences and warnings."""
    lines = ["## Paired differences", ""]
    rows = comparisons(out_dir, **kwargs)
    if rows:
        lines += [
            "Method minus baseline, paired over the same eval items and seeds; 95% bootstrap "
            "interval over items (and seeds). For loss, lower is better: `ahead` means lower.",
            "",
            "| method | budget | metric | vs | difference | 95% CI | verdict | items | seeds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['budget']} | {r['metric']} | {r['baseline']} | "
            f"{float(r['difference']):+.4f} | [{float(r['ci_low']):+.4f}, "
            f"{float(r['ci_high']):+.4f}] | {r['verdict']} | {r['n_items']} | {r['n_seeds']} |"
            for r in rows
        ]
        if any(r["n_seeds"] == "1" for r in rows):
            lines += [
                "",
                "With one seed an interval covers the sampling of eval items only, not the "
                "spread between training runs: run two seeds or more before trusting a verdict.",
            ]
    else:
        lines.append("No paired comparison: no method shares seeds and per-item results with "
                     "random or the full pool.")  # fmt: skip
    lines += _detectable_section(
        detectable_differences(out_dir, **kwargs),
        "Half-width of the 95% paired interval of random against random at the same budget "
        "(each seed paired with another; items and seeds resampled): a method closer to random "
        "than this cannot be told apart.",
        "Not computable: random needs two seeds or more at a budget "
        "(`s2l experiment CONFIG --calibrate` runs them).",
    )
    warnings = separation_warnings(out_dir, **kwargs)
    if warnings:
        lines += [""] + [f"**{w}**" for w in warnings]
    return "\n".join(lines) + "\n"


def calibration_markdown(out_dir: str | os.PathLike, **kwargs: int) -> str:
    """The calibration report of an experiment directory: random's learning curve (each
    budget and the full pool, per metric), the detectable difference at each budget, and
    whether the setup can separate methods. ``kwargs`` go to :func:`detectable_differences`."""
    lines = ["# Calibration", "", "## Learning curve of random", ""]
    lines += [
        "| metric | budget | n_train | mean over seeds |",
        "|---|---|---|---|",
    ]
    for metric, points in learning_curve(out_dir).items():
        lines += [f"| {metric} | {b} | {n:.0f} | {v:.4f} |" for b, n, v in points]
    detectable = detectable_differences(out_dir, **kwargs)
    lines += _detectable_section(
        detectable,
        "Half-width of the 95% paired interval of random against random (each seed paired "
        "with another; items and seeds resampled): the smallest difference to random this "
        "setup can detect.",
        "Not computable: random has fewer than two seeds with per-item results.",
    )
    warnings = separation_warnings(out_dir, **kwargs)
    full_pool_ran = all(p[-1][0] == "all" for p in learning_curve(out_dir).values())
    lines += [""]
    if warnings:
        lines += [f"**{w}**" for w in warnings]
    elif detectable and full_pool_ran:
        lines.append(
            "From random's smallest budget to the full pool every metric improves by at least "
            "twice its detectable difference: the setup can separate methods that differ by "
            "more than the detectable difference."
        )
    return "\n".join(lines) + "\n"


def _detectable_section(detectable: list[dict[str, str]], intro: str, missing: str) -> list[str]:
    """The "Detectable difference" section of a report: ``intro`` and a table of the rows of
    :func:`detectable_differences`, or ``missing`` when there are none."""
    lines = ["", "## Detectable difference", ""]
    if not detectable:
        return [*lines, missing]
    lines += [
        intro,
        "",
        "| budget | n_train | metric | detectable difference | seeds | items |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['budget']} | {r['n_train']} | {r['metric']} | ±{float(r['detectable']):.4f} | "
        f"{r['n_seeds']} | {r['n_items']} |"
        for r in detectable
    ]
    return lines


# --------------------------------------------------------------------------------------------
# Reading an experiment directory
# --------------------------------------------------------------------------------------------


def _overall_runs(out: Path) -> dict[tuple[str, str, str], dict[str, dict[str, str]]]:
    """The overall rows of results.csv: ``{(method, budget, metric): {seed: row}}``."""
    path = out / "results.csv"
    if not path.is_file():
        raise S2LError(f"{out}: no results.csv")
    runs: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] == "all":
                key = (row["method"], row["budget"], row["metric"])
                runs.setdefault(key, {})[row["seed"]] = row
    return runs


def _only_budget(runs: dict, method: str, metric: str) -> str | None:
    budgets = [b for m, b, x in runs if m == method and x == metric]
    return budgets[0] if budgets else None


def _paired_values(
    out: Path,
    method: str,
    budget: str,
    seeds: dict[str, dict[str, str]],
    baseline_key: tuple[str, str, str],
    baseline_seeds: dict[str, dict[str, str]],
    metric: str,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-item values of the method's and the baseline's runs, shape (n_seeds, n_items) each,
    seeds paired (the full pool's single run with every seed), items matched by id."""
    baseline, baseline_budget, _ = baseline_key
    if baseline == FULL_POOL:
        first = next(iter(baseline_seeds))
        pairs = [(s, s if s in baseline_seeds else first) for s in seeds]
    else:
        pairs = [(s, s) for s in seeds if s in baseline_seeds]
    if not pairs:
        return None
    left, right = [], []
    for s, t in pairs:
        a = read_item_values(out / "eval" / run_name(method, budget, s), metric)
        b = read_item_values(out / "eval" / run_name(baseline, baseline_budget, t), metric)
        if a is None or b is None:
            return None
        left.append(a)
        right.append(b)
    ids = sorted(set.intersection(*(set(v) for v in left + right)))
    if not ids:
        return None
    return (
        np.array([[v[i] for i in ids] for v in left]),
        np.array([[v[i] for i in ids] for v in right]),
    )


def _stack(runs: list[dict[str, float]]) -> np.ndarray:
    """Per-item values of several runs on their common items (sorted ids): (n_runs, n_items)."""
    ids = sorted(set.intersection(*(set(v) for v in runs)))
    return np.array([[v[i] for i in ids] for v in runs]).reshape(len(runs), len(ids))


def _comparison_row(
    method: str, budget: str, metric: str, baseline: str, diff: PairedDifference, word: str
) -> dict[str, str]:
    return {
        "method": method,
        "budget": budget,
        "metric": metric,
        "baseline": baseline,
        "difference": f"{diff.mean:.6g}",
        "ci_low": f"{diff.ci_low:.6g}",
        "ci_high": f"{diff.ci_high:.6g}",
        "verdict": word,
        "n_items": str(diff.n_items),
        "n_seeds": str(diff.n_seeds),
    }
