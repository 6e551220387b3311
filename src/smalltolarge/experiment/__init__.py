"""Experiments: S2L against baselines at several budgets and seeds, from one YAML config.

One proxy is trained and scored on the pool (once, reused by fingerprint); then, for every
``(method, budget, seed)``, a subset is selected, the target model is fine-tuned on it and
evaluated on a held-out set. Each finished run is appended to ``OUT/results.csv`` at once, so
an interrupted experiment resumes where it stopped: runs already in the CSV are skipped, the
proxy and trajectories are reused, and an interrupted fine-tuning resumes by itself.
Every run records the generation metric and the held-out loss (:mod:`smalltolarge.heldout`),
overall and per source, with per-item results under ``eval/<run>/``, so that paired
statistics (:mod:`smalltolarge.compare`) can be computed later from the files alone. At the end
``OUT/results.md`` (tables, paired differences to random and to the full pool, the detectable
difference at each budget, and a warning when the setup cannot separate methods),
``OUT/comparisons.csv`` and ``OUT/results.png`` (metric vs budget, and differences to random)
are written; :func:`write_table`, :func:`~smalltolarge.compare.write_comparisons` and
:func:`plot_results` re-make them from the results directory alone.

``calibrate=True`` (``s2l experiment CONFIG --calibrate``) runs only random at the smallest and
the largest budget of the config (with all of random's seeds, at least 2) and the full pool,
and writes ``OUT/calibration.md`` and ``OUT/calibration.png``: random's learning curve and the
smallest difference the setup can detect at each budget. Its runs are ordinary runs of the
experiment, so the full experiment later reuses them.

Layout of ``OUT``: ``run/`` (the S2L run: pool, proxy, trajectories, ``selections/<run>``),
``models/<run>/`` (``finetune.json``; ``model/`` only with ``keep_models``), ``eval/<run>/``
(``predictions.jsonl``: correctness per item, ``scores.json``; ``losses.jsonl``: loss per item,
``loss.json``), ``experiment.json`` (what the results were made with), ``results.csv`` (metric
``loss`` rows, with source ``macro`` for the mean over sources, next to the generation
metric's), ``results.md``, ``results.png``, ``comparisons.csv``, and with ``--calibrate``
``calibration.md`` and ``calibration.png``. ``<run>`` is ``<label>-<budget>-seed<seed>``,
``full-pool-seed<seed>`` or ``base``.

The stages of the harness, one module each: :mod:`~smalltolarge.experiment.config` (the config
keys, their defaults and checks), :mod:`~smalltolarge.experiment.plan` (which runs a config
asks for), :mod:`~smalltolarge.experiment.runner` (running them) and
:mod:`~smalltolarge.experiment.results` (``results.csv``, the report and the plots).
"""

from smalltolarge.experiment.config import (
    BUNDLED,
    PRECISIONS,
    ExperimentConfig,
    MethodSpec,
    load_config,
)
from smalltolarge.experiment.results import (
    LOSS,
    RESULT_COLUMNS,
    plot_calibration,
    plot_results,
    read_results,
    write_results,
    write_table,
)
from smalltolarge.experiment.runner import ExperimentResult, check_no_overlap, run_experiment

__all__ = [
    "BUNDLED",
    "LOSS",
    "PRECISIONS",
    "RESULT_COLUMNS",
    "ExperimentConfig",
    "ExperimentResult",
    "MethodSpec",
    "check_no_overlap",
    "load_config",
    "plot_calibration",
    "plot_results",
    "read_results",
    "run_experiment",
    "write_results",
    "write_table",
]
