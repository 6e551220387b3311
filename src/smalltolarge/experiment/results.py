"""The results of an experiment: ``results.csv``, its Markdown report and its plots.

``results.csv`` has one row per (run, metric, source), columns :data:`RESULT_COLUMNS`; source
``all`` is the overall score, ``macro`` (loss only) the mean over sources. It is rewritten
whole after every run (:func:`write_results`), so an interrupted experiment loses no finished
run. :func:`write_table`, :func:`plot_results` and :func:`plot_calibration` re-make the
report and the figures from the results directory alone.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smalltolarge.compare import (
    BASE,
    FULL_POOL,
    LOWER_IS_BETTER,
    RANDOM,
    comparisons,
    comparisons_markdown,
    learning_curve,
)
from smalltolarge.errors import S2LError
from smalltolarge.runs import atomic_open, atomic_write_text
from smalltolarge.settings import budget_value

__all__ = [
    "LOSS",
    "RESULT_COLUMNS",
    "plot_calibration",
    "plot_results",
    "read_results",
    "write_results",
    "write_table",
]

RESULT_COLUMNS = (
    "method",
    "budget",
    "seed",
    "n_train",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n_eval",
    "source",
    "train_seconds",
    "eval_seconds",
    "wall_seconds",
)
#: ``method`` of results.csv is an entry's label; FULL_POOL and BASE (from compare) name the
#: fine-tuning on the whole pool and the untrained target. The metric of the held-out loss:
LOSS = "loss"


def read_results(csv_path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``results.csv`` (columns :data:`RESULT_COLUMNS`, values as text), in file
    order; ``[]`` when the file does not exist.

    Raises:
        S2LError: when the file has other columns (made by another version).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return []
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != RESULT_COLUMNS:
            raise S2LError(
                f"{csv_path}: not a results file of this version (columns "
                f"{', '.join(reader.fieldnames or [])}); use another out_dir"
            )
        return list(reader)


def write_results(csv_path: str | os.PathLike, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` (keys :data:`RESULT_COLUMNS`) as ``csv_path``, replacing the file."""
    # The whole file each time, through a rename: an interruption leaves the old file or the
    # new one, never half a row.
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buffer.getvalue())


def write_table(results_csv: str | os.PathLike, *, command: str | None = None) -> str:
    """The Markdown report of ``results.csv``: a table per metric, then the paired comparisons.

    Each table row gives the mean ± sample std over seeds, the mean of the per-seed 95% CI
    bounds, the number of seeds and of training examples; selection methods first (budgets
    ascending), then the full-pool run and the base model. When the per-item results lie
    beside the CSV (``eval/``), the sections of
    :func:`~smalltolarge.compare.comparisons_markdown` follow: paired differences to random and
    to the full pool, the detectable difference at each budget, and a warning when the setup
    cannot separate methods. ``command`` (the command that made the results) is printed last.
    """
    summaries = _summaries(results_csv)
    if not summaries:
        raise S2LError(f"{results_csv}: no results yet")
    methods = [s.method for s in summaries]
    order = {m: k for k, m in enumerate(dict.fromkeys(methods))}
    last = {FULL_POOL: len(order), BASE: len(order) + 1}
    summaries.sort(key=lambda s: (last.get(s.method, order[s.method]), budget_value(s.budget)))
    lines: list[str] = []
    for metric in _metrics(summaries):
        lines += _metric_table([s for s in summaries if s.metric == metric], metric)
    out_dir = Path(results_csv).parent
    if (out_dir / "eval").is_dir():
        lines += [comparisons_markdown(out_dir).rstrip("\n"), ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def plot_results(results_csv: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Plot each metric against the budget from ``results.csv`` into ``png``.

    One column per metric. Top: one line per selection method, error bars = sample std over
    seeds; the full-pool run is a horizontal line, the base model a dotted one. Bottom (when
    the per-item results beside the CSV allow paired comparisons): each method's difference to
    random at the same budget, error bars = the paired 95% interval. Returns the PNG's path.
    """
    summaries = _summaries(results_csv)
    if not summaries:
        raise S2LError(f"{results_csv}: no results yet")
    out_dir = Path(results_csv).parent
    differences = (
        [r for r in comparisons(out_dir) if r["baseline"] == RANDOM]
        if (out_dir / "eval").is_dir()
        else []
    )
    metrics = _metrics(summaries)
    # one colour per method in every panel
    labels = dict.fromkeys(s.method for s in summaries if s.method not in (FULL_POOL, BASE))
    colors = {method: f"C{k % 10}" for k, method in enumerate(labels)}
    fig, _ = _figure(len(metrics), 2 if differences else 1)
    for col, metric in enumerate(metrics):
        ax = fig.axes[col]
        _plot_metric(ax, [s for s in summaries if s.metric == metric], metric, colors)
        if differences:
            _plot_differences(fig.axes[len(metrics) + col], differences, metric, colors)
    return _save(fig, png)


def plot_calibration(results_csv: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Plot random's learning curve (each seed, and the mean) and the full pool against the
    number of training examples, one panel per metric, from the results directory of
    ``results_csv``. Returns the PNG's path."""
    out_dir = Path(results_csv).parent
    curves = learning_curve(out_dir)
    if not curves:
        raise S2LError(f"{results_csv}: no random or full-pool results to calibrate with")
    rows = [r for r in read_results(results_csv) if r["source"] == "all"]
    metrics = sorted(curves, key=lambda m: m == LOSS)
    fig, _ = _figure(len(metrics), 1)
    for ax, metric in zip(fig.axes, metrics, strict=True):
        points = [r for r in rows if r["metric"] == metric and r["method"] in (RANDOM, FULL_POOL)]
        ax.scatter(
            [int(r["n_train"]) for r in points],
            [float(r["value"]) for r in points],
            color="grey",
            alpha=0.6,
            label="one seed",
        )
        curve = curves[metric]
        ax.plot(
            [p[1] for p in curve], [p[2] for p in curve], marker="o", label="random → full pool"
        )
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_ylabel(f"{metric} ({better})")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, png)


@dataclass
class _Summary:
    """The overall results of one (method, budget, metric) over its seeds."""

    method: str
    budget: str
    values: list[float]
    ci_lows: list[float]
    ci_highs: list[float]
    n_train: list[int]
    n_eval: int
    metric: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        # Sample std over seeds: the spread one would see re-running a seed.
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


def _summaries(csv_path: str | os.PathLike) -> list[_Summary]:
    """Overall rows grouped by (method, budget, metric), in the order the CSV first lists them."""
    groups: dict[tuple[str, str, str], _Summary] = {}
    for row in read_results(csv_path):
        if row["source"] != "all":
            continue
        key = (row["method"], row["budget"], row["metric"])
        if key not in groups:
            groups[key] = _Summary(key[0], key[1], [], [], [], [], int(row["n_eval"]), key[2])
        group = groups[key]
        group.values.append(float(row["value"]))
        group.ci_lows.append(float(row["ci_low"]))
        group.ci_highs.append(float(row["ci_high"]))
        group.n_train.append(int(row["n_train"]))
    return list(groups.values())


def _metrics(summaries: list[_Summary]) -> list[str]:
    """The metrics of the results, the generation metric first, the loss last."""
    found = list(dict.fromkeys(s.metric for s in summaries))
    return sorted(found, key=lambda m: m == LOSS)


def _metric_table(summaries: list[_Summary], metric: str) -> list[str]:
    n_eval = summaries[0].n_eval
    ci = "bootstrap" if metric == LOSS else "Wilson/bootstrap"
    unit = " (nats per response token, lower is better)" if metric == LOSS else ""
    lines = [
        f"{metric}{unit} on {n_eval} held-out items (mean ± std over seeds; 95% CI: mean of "
        f"the per-seed {ci} bounds)",
        "",
        f"| method | budget | n_train | {metric} | 95% CI | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        value = f"{s.mean:.3f}" + ("" if s.std is None else f" ± {s.std:.3f}")
        budget = {FULL_POOL: "all", BASE: "—"}.get(s.method, s.budget)
        n_train = "0 (untrained)" if s.method == BASE else str(round(np.mean(s.n_train)))
        lines.append(
            f"| {s.method} | {budget} | {n_train} | {value} | "
            f"[{np.mean(s.ci_lows):.3f}, {np.mean(s.ci_highs):.3f}] | {len(s.values)} |"
        )
    return [*lines, ""]


def _figure(n_cols: int, n_rows: int) -> tuple[Any, Any]:
    # Figure + the Agg canvas directly: no pyplot, so no global backend state and no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * n_cols, 4.2 * n_rows))
    canvas = FigureCanvasAgg(fig)
    for k in range(n_cols * n_rows):
        fig.add_subplot(n_rows, n_cols, k + 1)
    return fig, canvas


def _plot_metric(ax: Any, summaries: list[_Summary], metric: str, colors: dict) -> None:
    for method in dict.fromkeys(s.method for s in summaries if s.method not in (FULL_POOL, BASE)):
        points = sorted(
            (s for s in summaries if s.method == method), key=lambda s: budget_value(s.budget)
        )
        ax.errorbar(
            [budget_value(s.budget) for s in points],
            [s.mean for s in points],
            yerr=[s.std or 0.0 for s in points],
            marker="o",
            capsize=3,
            color=colors[method],
            label=method,
        )
    for s in summaries:
        if s.method in (FULL_POOL, BASE):
            ax.axhline(
                s.mean,
                color="black" if s.method == FULL_POOL else "grey",
                linestyle="--" if s.method == FULL_POOL else ":",
                label="full pool" if s.method == FULL_POOL else "base model",
            )
    ax.set_xlabel("budget (fraction of the pool, or examples)")
    ax.set_ylabel(f"{metric} (overall)")
    ax.grid(alpha=0.3)
    ax.legend()


def _plot_differences(ax: Any, rows: list[dict[str, str]], metric: str, colors: dict) -> None:
    rows = [r for r in rows if r["metric"] == metric]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for k, method in enumerate(methods):
        mine = sorted(
            (r for r in rows if r["method"] == method), key=lambda r: budget_value(r["budget"])
        )
        x = np.array([budget_value(r["budget"]) for r in mine])
        # a small sideways shift per method keeps overlapping error bars readable
        shift = 1 + 0.03 * (k - (len(methods) - 1) / 2)
        y = np.array([float(r["difference"]) for r in mine])
        yerr = [y - [float(r["ci_low"]) for r in mine], [float(r["ci_high"]) for r in mine] - y]
        ax.errorbar(
            x * shift,
            y,
            yerr=yerr,
            marker="o",
            capsize=3,
            linestyle="",
            color=colors.get(method),
            label=method,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("budget (fraction of the pool, or examples)")
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    ax.set_ylabel(f"{metric}: method − random ({better} is better)")
    ax.grid(alpha=0.3)
    if methods:
        ax.legend()


def _save(fig: Any, png: str | os.PathLike) -> Path:
    fig.tight_layout()
    png = Path(png)
    with atomic_open(png, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return png
