"""The run plan of an experiment: which fine-tune + evaluate runs a config asks for.

:func:`planned_runs` lists every run of the full experiment (the base model, every
``(label, budget, seed)`` of the ``methods`` entries, the full pool); :func:`calibration_runs`
the few that ``--calibrate`` needs. Each :class:`PlannedRun` knows its key in ``results.csv``
and its directory name under ``eval/`` and ``models/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalltolarge.compare import BASE, FULL_POOL, RANDOM, run_name
from smalltolarge.errors import S2LError
from smalltolarge.experiment.config import ExperimentConfig, MethodSpec
from smalltolarge.selection import resolve_budget
from smalltolarge.settings import budget_label

__all__ = ["PlannedRun", "calibration_runs", "method_run", "planned_runs"]


@dataclass(frozen=True)
class PlannedRun:
    """One fine-tune + evaluate of the plan; ``method`` is an entry's label, FULL_POOL or BASE,
    ``selector`` the selection method behind a label."""

    method: str
    budget: str
    seed: int | None
    budget_value: float | int | str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    selector: str = ""
    stratify_by: str | None = None
    preset: str | None = None
    target_set: Path | None = None
    target_weight: float = 0.5

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.budget, "" if self.seed is None else str(self.seed))

    @property
    def name(self) -> str:
        return run_name(self.method, self.budget, self.seed)

    @property
    def label(self) -> str:
        if self.method == BASE:
            return "base model (untrained target)"
        if self.method == FULL_POOL:
            return f"full pool, seed {self.seed}"
        return f"{self.method} budget {self.budget} seed {self.seed}"


def planned_runs(cfg: ExperimentConfig) -> list[PlannedRun]:
    """Every run of the experiment, in order: the base model (``evaluate_base``), each entry's
    budgets x seeds, the full pool (``full_pool``, with the first seed).

    Raises:
        S2LError: when two entries ask for the same (label, budget, seed).
    """
    runs = [PlannedRun(BASE, "0", None)] if cfg.evaluate_base else []
    for spec in cfg.methods:
        for budget in spec.budgets:
            for seed in spec.seeds:
                runs.append(method_run(cfg, spec, budget, seed))
    if cfg.full_pool:
        first_seed = cfg.methods[0].seeds[0] if cfg.methods else 0
        runs.append(PlannedRun(FULL_POOL, "1.0", first_seed))
    seen: set[tuple[str, str, str]] = set()
    for run in runs:
        if run.key in seen:
            raise S2LError(f"the run {run.label} is listed twice in methods")
        seen.add(run.key)
    return runs


def method_run(cfg: ExperimentConfig, spec: MethodSpec, budget: Any, seed: int) -> PlannedRun:
    """The run of entry ``spec`` at ``budget`` (as the config gives it) and ``seed``."""
    return PlannedRun(
        spec.label,
        budget_label(budget),  # one spelling: 0.30, 0.3 and "30%" are one run
        seed,
        budget,
        spec.settings,
        spec.method,
        cfg.stratify_column(spec),
        spec.preset,
        spec.target_set,
        spec.target_weight,
    )


def calibration_runs(cfg: ExperimentConfig, n_pool: int) -> tuple[list[PlannedRun], list[str]]:
    """Random at the smallest and the largest budget of the config, with random's seeds (at
    least 2), and the full pool (with the first seed, as the full experiment would); and notes
    for the user on what was changed or is missing."""
    budgets = [b for spec in cfg.methods for b in spec.budgets]
    if not budgets:
        raise S2LError("--calibrate needs at least one budget in methods")
    counts = [resolve_budget(b, n_pool) for b in budgets]
    smallest, largest = budgets[counts.index(min(counts))], budgets[counts.index(max(counts))]
    randoms = [spec for spec in cfg.methods if spec.label == RANDOM]
    spec = randoms[0] if randoms else MethodSpec(RANDOM, (), ())
    seeds = sorted({s for r in randoms for s in r.seeds}) or sorted(
        {s for other in cfg.methods for s in other.seeds}
    )
    notes = []
    if len(seeds) < 2:
        start = max(seeds, default=-1) + 1
        added = list(range(start, start + 2 - len(seeds)))
        notes.append(
            f"The config gives random {len(seeds)} seed(s); the detectable difference needs two, "
            f"so seed(s) {', '.join(map(str, added))} are added."
        )
        seeds += added
    if str(smallest) == str(largest):
        notes.append(f"The config has one budget ({smallest}): the curve has one random point.")
    first_seed = cfg.methods[0].seeds[0] if cfg.methods else seeds[0]
    runs = [
        method_run(cfg, spec, budget, seed)
        for budget in dict.fromkeys([smallest, largest])
        for seed in seeds
    ]
    return runs + [PlannedRun(FULL_POOL, "1.0", first_seed)], notes
