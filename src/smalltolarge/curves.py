"""How much data is enough? A learning curve per method, fitted to an experiment's results.

``fit_learning_curves(OUT)`` reads ``OUT/results.csv`` (see :mod:`smalltolarge.experiment`;
the overall rows, ``source == "all"``) and, for every method measured at two budgets or more
and every metric, fits how far the method's score falls short of the full pool's as the
budget shrinks:

    shortfall(x) = b * (x ** -c - 1),   x = n_train / n_full in (0, 1],  b >= 0, c > 0

where the shortfall is ``full - score`` (``score - full`` for the loss, lower being better) and
``full`` is the measured mean of the full-pool runs. Why this family: fine-tuning learning
curves follow power laws in the data size (Hestness et al., 2017; Kaplan et al., 2020), and
anchoring the curve at the measured full pool (shortfall 0 at ``x = 1``) answers the question
in the units it is asked in with two parameters, so two budgets plus the full pool suffice; the
curve saturates at the full pool and never predicts more than it (a subset that beats the full
pool fits as ``b = 0``: no shortfall anywhere). With exactly two budgets the curve passes through
both means; the interval then reflects seed noise only, not the choice of family.

The budget needed is the smallest ``x`` whose predicted shortfall is within ``tolerance``
(default: 1 point, 0.01, for scores in [0, 1]; 1% of the full pool's value for the loss):
``x* = (1 + tolerance / b) ** (-1 / c)``. Its 95% interval comes from a bootstrap over seeds
(each budget's seeds, and the full pool's, resampled with replacement, the curve refitted).
An ``x*`` below the smallest measured budget is not reported as a number: the curve is not
extrapolated beyond the measured budgets, and the result says so. An ``x*`` more than
``GAP_RATIO`` times the largest measured budget (with nothing measured between it and the full
pool) is reported, marked ``~`` and noted: there the family's shape, not a measurement, places
it, and the interval (seed noise only) understates the uncertainty.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smalltolarge.compare import BASE, FULL_POOL, LOWER_IS_BETTER
from smalltolarge.errors import S2LError
from smalltolarge.runs import atomic_open, atomic_write_text
from smalltolarge.settings import check_non_negative

#: Exponents ``c`` tried by the fit (for each, the best ``b`` has a closed form).
_EXPONENTS = np.geomspace(0.02, 10.0, 600)
RESAMPLES = 1000
#: A budget needed more than this many times the largest measured budget is flagged as read
#: across an unmeasured gap (it stays in the table, marked "~").
GAP_RATIO = 2.0
GAP_NOTE = "interpolated"


@dataclass
class CurveFit:
    """The fitted learning curve of one method on one metric.

    ``points``: ``(x, mean n_train, mean value, per-seed values)`` per measured budget, x the
    share of the full pool. ``x_needed``: the smallest share within ``tolerance`` of the full
    pool (None when that lies below the smallest measured budget, or the fit is refused);
    ``x_interval``: its 95% bootstrap interval over seeds (a bound below the smallest measured
    budget is None). ``note`` says why a number is missing.
    """

    method: str
    metric: str
    full_value: float
    n_full: float
    tolerance: float
    b: float
    c: float
    points: list[tuple[float, float, float, list[float]]]
    x_needed: float | None
    x_interval: tuple[float | None, float | None]
    note: str = ""
    lower_is_better: bool = False
    boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)

    @property
    def n_needed(self) -> int | None:
        return None if self.x_needed is None else int(np.ceil(self.x_needed * self.n_full))

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """Predicted metric value at pool share ``x``."""
        shortfall = self.b * (np.asarray(x, dtype=float) ** -self.c - 1)
        return self.full_value + (shortfall if self.lower_is_better else -shortfall)


def fit_learning_curves(
    results: str | os.PathLike,
    *,
    metric: str | None = None,
    tolerance: float | None = None,
    relative_tolerance: float = 0.01,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[CurveFit]:
    """Fit one curve per (method, metric) of an experiment's ``results.csv``.

    Args:
        results: the experiment's output directory, or its ``results.csv``.
        metric: fit only this metric [default: every metric].
        tolerance: absolute tolerance in the metric's units [default: 0.01 (1 point) for
            higher-is-better metrics, ``relative_tolerance`` x the full pool's value for the
            loss].
        resamples: bootstrap resamples over seeds for the intervals.
        seed: the bootstrap's seed.

    Returns:
        One :class:`CurveFit` per method with two budgets or more, and a note-only fit (no
        curve) for each method measured at a single budget.

    Raises:
        S2LError: a negative tolerance, no results.csv, or no full-pool run for a metric.
    """
    check_non_negative("tolerance", tolerance, optional=True)  # checked here, once
    check_non_negative("relative_tolerance", relative_tolerance)
    path = _existing(Path(results))
    path = path / "results.csv" if path.is_dir() else path
    runs = _read_overall(path)
    metrics = sorted({m for _, _, m in runs} if metric is None else {metric})
    rng = np.random.default_rng(seed)
    fits = []
    for the_metric in metrics:
        full = [v for (meth, _, m), v in runs.items() if meth == FULL_POOL and m == the_metric]
        if not full:
            raise S2LError(f"{path}: no {FULL_POOL} run for metric {the_metric}; nothing to fit to")
        full_values = np.asarray([value for _, value in full[0]])
        n_full = float(np.mean([n for n, _ in full[0]]))
        lower = the_metric in LOWER_IS_BETTER
        tol = tolerance
        if tol is None:
            tol = relative_tolerance * abs(float(full_values.mean())) if lower else 0.01
        methods = sorted({meth for meth, _, m in runs if m == the_metric} - {FULL_POOL, BASE})
        for method in methods:
            budgets = sorted(
                (
                    (float(np.mean([n for n, _ in seeds])) / n_full, [v for _, v in seeds])
                    for (meth, _, m), seeds in runs.items()
                    if meth == method and m == the_metric
                ),
                key=lambda p: p[0],
            )
            fits.append(
                _fit_method(
                    method, the_metric, budgets, full_values, n_full, tol, lower, rng, resamples
                )  # fmt: skip
            )
    return fits


def _fit_method(method, metric, budgets, full_values, n_full, tol, lower, rng, resamples):
    sign = 1.0 if lower else -1.0  # shortfall = sign * (value - full)
    xs = np.asarray([x for x, _ in budgets])
    means = np.asarray([np.mean(v) for _, v in budgets])
    full_mean = float(np.mean(full_values))
    points = [(x, x * n_full, float(np.mean(v)), list(v)) for x, v in budgets]
    base = dict(method=method, metric=metric, full_value=full_mean, n_full=n_full,
                tolerance=tol, points=points, lower_is_better=lower)  # fmt: skip
    if len(xs) < 2 or np.any(xs >= 1):
        why = "measured at one budget only" if len(xs) < 2 else "a budget is the full pool"
        return CurveFit(**base, b=float("nan"), c=float("nan"), x_needed=None,
                        x_interval=(None, None), note=f"no curve: {why}")  # fmt: skip

    b, c = _fit(xs, sign * (means - full_mean))
    x_star = _x_needed(b, c, tol)
    boot = np.empty((resamples, 2))
    for r in range(resamples):
        full_r = rng.choice(full_values, size=len(full_values)).mean()
        means_r = np.asarray([rng.choice(v, size=len(v)).mean() for _, v in budgets])
        boot[r] = _fit(xs, sign * (means_r - full_r))
    stars = np.asarray([_x_needed(bb, cc, tol) for bb, cc in boot])
    lo, hi = np.percentile(stars, [2.5, 97.5])
    x_min, x_max = float(xs.min()), float(xs.max())
    note = ""
    if x_star < x_min:
        note = (
            f"the curve is within tolerance already at the smallest measured budget "
            f"({x_min:.3g} of the pool); a smaller budget would be an extrapolation, not reported"
        )
    elif x_star > GAP_RATIO * x_max:
        note = (
            f"{GAP_NOTE} between the largest measured budget ({x_max:.3g} of the pool) and the "
            f"full pool: the budget needed ({x_star:.3g}) is read off the curve family's shape "
            f"across an unmeasured gap, and its interval holds seed noise only; measure a budget "
            f"near it before relying on it"
        )
    return CurveFit(
        **base,
        b=b,
        c=c,
        x_needed=None if x_star < x_min else x_star,
        x_interval=(None if lo < x_min else float(lo), None if hi < x_min else float(hi)),
        note=note,
        boot=boot,
    )


def _fit(x: np.ndarray, shortfall: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(b, c)`` of ``shortfall = b * (x**-c - 1)`` with ``b >= 0``."""
    f = x[None, :] ** -_EXPONENTS[:, None] - 1  # (n_c, n_x), positive for x < 1
    b = np.clip((f * shortfall).sum(axis=1) / (f * f).sum(axis=1), 0, None)
    sse = ((b[:, None] * f - shortfall) ** 2).sum(axis=1)
    k = int(np.argmin(sse))
    return float(b[k]), float(_EXPONENTS[k])


def _x_needed(b: float, c: float, tol: float) -> float:
    """The smallest share of the pool whose predicted shortfall is at most ``tol``."""
    if b <= 0:
        return 0.0
    return float((1 + tol / b) ** (-1 / c))


def curves_markdown(fits: list[CurveFit]) -> str:
    """A Markdown table of the fits: the budget needed to come within tolerance of the full
    pool, with its interval, or why there is none."""
    lines = [
        "| metric | method | budgets | curve (b, c) | within | budget needed | 95% interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in fits:
        budgets = ", ".join(f"{p[0]:.3g}" for p in f.points)
        curve = "-" if np.isnan(f.b) else f"{f.b:.3g}, {f.c:.3g}"
        if f.x_needed is None:
            needed = f"< {f.points[0][0]:.3g}" if f.note.startswith("the curve") else "-"
        else:
            approx = "~" if f.note.startswith(GAP_NOTE) else ""
            needed = f"{approx}{f.x_needed:.3g} ({f.n_needed} examples)"
        lo, hi = f.x_interval
        interval = (
            "-"
            if np.isnan(f.b)
            else f"{'<' + format(f.points[0][0], '.3g') if lo is None else format(lo, '.3g')}"
            f" - {'<' + format(f.points[0][0], '.3g') if hi is None else format(hi, '.3g')}"
        )
        lines.append(
            f"| {f.metric} | {f.method} | {budgets} | {curve} | {f.tolerance:.3g} | {needed} "
            f"| {interval} |"
        )
    notes = [f"- {f.method} ({f.metric}): {f.note}" for f in fits if f.note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot_learning_curves(fits: list[CurveFit], png: str | os.PathLike) -> Path:
    """Each method's measured points (seed means, seeds as dots), its fitted curve over the
    measured range with a 95% band, the full pool and the tolerance band; one panel per
    metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({f.metric for f in fits})
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        mine = [f for f in fits if f.metric == metric]
        for k, f in enumerate(mine):
            colour = f"C{k}"
            xs = [p[0] for p in f.points]
            ax.plot(xs, [p[2] for p in f.points], "o", color=colour, label=f.method)
            for p in f.points:
                ax.plot([p[0]] * len(p[3]), p[3], ".", color=colour, alpha=0.4)
            if np.isnan(f.b):
                continue
            grid = np.geomspace(min(xs), 1.0, 100)  # the measured range only
            ax.plot(grid, f.predict(grid), "-", color=colour)
            if len(f.boot):
                sign = 1.0 if f.lower_is_better else -1.0
                curves = f.full_value + sign * (
                    f.boot[:, :1] * (grid[None, :] ** -f.boot[:, 1:] - 1)
                )
                lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.15)
            if f.x_needed is not None:
                ax.axvline(f.x_needed, color=colour, ls=":", lw=1)
        full, tol = mine[0].full_value, mine[0].tolerance
        ax.axhline(full, color="black", lw=1, label="full pool")
        ax.axhspan(full - tol, full + tol, color="grey", alpha=0.15, label="tolerance")
        ax.set_xscale("log")
        ax.set_xlabel("share of the pool (log)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        ax.set_title(f"{metric}: fit shortfall = b (x^-c - 1), dotted: budget needed", fontsize=9)
    fig.tight_layout()
    png = Path(png)
    with atomic_open(png) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return png


def write_learning_curves(
    results_dir: str | os.PathLike, **kwargs
) -> tuple[list[CurveFit], Path, Path]:
    """Fit the curves of ``results_dir`` and write ``learning_curves.md`` and
    ``learning_curves.png`` next to its results.csv. ``kwargs`` go to
    :func:`fit_learning_curves`."""
    out = _existing(Path(results_dir))
    out = out if out.is_dir() else out.parent
    fits = fit_learning_curves(out, **kwargs)
    if not fits:
        raise S2LError(f"{out}: no method to fit")
    md = out / "learning_curves.md"
    atomic_write_text(md, "# Learning curves\n\n" + curves_markdown(fits))
    return fits, md, plot_learning_curves(fits, out / "learning_curves.png")


def _existing(path: Path) -> Path:
    """``path``, refused by its own name when it does not exist."""
    if not path.exists():
        raise S2LError(
            f"{path}: does not exist (give an experiment's out_dir, which holds results.csv)"
        )
    return path


def _read_overall(path: Path) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """``{(method, budget, metric): [(n_train, value) per seed]}`` of the overall rows."""
    if not path.is_file():
        raise S2LError(f"{path}: no results.csv")
    runs: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("source") != "all":
                continue
            key = (row["method"], row["budget"], row["metric"])
            runs.setdefault(key, []).append((float(row["n_train"]), float(row["value"])))
    return runs
