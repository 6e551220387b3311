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

Config keys (YAML file or dict; an unknown key at any level is an error)::

    name: demo-math                  # required for a dict; default for a file: its stem
    out_dir: runs/experiments/NAME   # default runs/experiments/<name>; relative to the cwd
    pool: path/to/pool.jsonl         # anything load_pool reads; "bundled:demo_pool" and
                                     # "bundled:demo_eval" are the bundled demo files
    pool_limit: null                 # use only the first N examples (JSONL; -> OUT/pool.jsonl)
    eval: path/to/eval.jsonl         # the held-out set; no prompt may also be in the pool
    eval_per_source: null            # first N items of each source (JSONL; -> OUT/eval.jsonl)
    proxy:                           # the S2L proxy, trained once on the whole pool
      name: tiny                     # a preset or a HF causal LM
      epochs: 3
      checkpoints: 12                # loss-trajectory length
      max_length: 256
      learning_rate: null            # null: the preset's / S2L's reference value
      batch_size: null
      precision: auto                # auto, fp32, bf16, fp16
      seed: 0
      template: alpaca
    target:                          # the model fine-tuned on every subset
      model: smollm2-135m            # a HF name, local directory or offline short name
      epochs: 1
      learning_rate: 5.0e-5
      batch_size: 8
      grad_accum: 1
      max_length: 256
      lora: false
      precision: auto
      template: alpaca
    evaluation:
      metric: exact_match            # exact_match, rouge_l or auto: generate and score, plus
                                     # the held-out loss; loss: the held-out loss alone (no
                                     # generation: fast)
      max_new_tokens: 96
      batch_size: 16
      precision: auto
      template: null                 # null: target.template
    methods:                         # selection runs: every budget x every seed of a method
      - {method: s2l, budgets: [0.1, 0.3], seeds: [0, 1], settings: {n_clusters: 100}}
      - {method: s2l, label: s2l-per-source, stratify: true, budgets: [0.1], seeds: [0, 1]}
      - {method: random, budgets: [0.1, 0.3], seeds: [0, 1]}
                                     # label: the name in results and of the run directories
                                     #   (default: the method); entries sharing a label must
                                     #   agree on method, settings and stratify. "random" is
                                     #   the baseline of the paired comparisons.
                                     # stratify: true selects per source (column stratify_by,
                                     #   else "source"), false globally; absent: stratify_by
                                     # preset: reference selects with the reference code's
                                     #   rules (per source, clusters of <= 2 rows set aside);
                                     #   the proxy's template and scoring are the proxy
                                     #   section's (see smalltolarge.presets)
    full_pool: true                  # also fine-tune once on the whole pool (first seed)
    evaluate_base: false             # also evaluate the untrained target once
    stratify_by: null                # default for entries without stratify: select per source
                                     # ("source"), as the reference code
    keep_models: false               # keep fine-tuned weights (else deleted once evaluated)

Relative ``pool`` and ``eval`` paths resolve against the config file's directory (the cwd for a
dict). Budgets are fractions of the pool (``0.1``, ``"10%"``) or counts (``300``); seeds seed
both the selection and the fine-tuning. Layout of ``OUT``: ``run/`` (the S2L run: pool, proxy,
trajectories, ``selections/<run>``), ``models/<run>/`` (``finetune.json``; ``model/`` only with
``keep_models``), ``eval/<run>/`` (``predictions.jsonl``: correctness per item,
``scores.json``; ``losses.jsonl``: loss per item, ``loss.json``), ``experiment.json`` (what the
results were made with), ``results.csv`` (metric ``loss`` rows, with source ``macro`` for the
mean over sources, next to the generation metric's), ``results.md``, ``results.png``,
``comparisons.csv``, and with ``--calibrate`` ``calibration.md`` and ``calibration.png``.
``<run>`` is ``<label>-<budget>-seed<seed>``, ``full-pool-seed<seed>`` or ``base``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from smalltolarge.compare import (
    BASE,
    FULL_POOL,
    LOWER_IS_BETTER,
    RANDOM,
    calibration_markdown,
    comparisons,
    comparisons_markdown,
    learning_curve,
    run_name,
    write_comparisons,
)
from smalltolarge.data import Pool, _iter_jsonl_lines, load_pool
from smalltolarge.demo_data import DEMO_EVAL, DEMO_POOL
from smalltolarge.errors import S2LError
from smalltolarge.evaluate import METRICS, evaluate
from smalltolarge.finetune import finetune
from smalltolarge.formatting import TEMPLATES
from smalltolarge.prepare import prepare
from smalltolarge.presets import PRESETS
from smalltolarge.proxy import train_proxy
from smalltolarge.runs import RunDir, atomic_write_json, atomic_write_text, fingerprint, read_json
from smalltolarge.scoring import score_trajectories
from smalltolarge.selection import SELECTORS, make_selector, resolve_budget
from smalltolarge.subset import select_subset

__all__ = [
    "RESULT_COLUMNS",
    "ExperimentConfig",
    "ExperimentResult",
    "MethodSpec",
    "load_config",
    "plot_calibration",
    "plot_results",
    "run_experiment",
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
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

BUNDLED = {"bundled:demo_pool": DEMO_POOL, "bundled:demo_eval": DEMO_EVAL}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DEFAULTS: dict[str, Any] = {
    "out_dir": None,
    "pool_limit": None,
    "eval_per_source": None,
    "methods": [],
    "full_pool": False,
    "evaluate_base": False,
    "stratify_by": None,
    "keep_models": False,
}
_REQUIRED = ("name", "pool", "eval")
_SECTIONS: dict[str, dict[str, Any]] = {
    "proxy": {
        "name": "tiny",
        "epochs": 3.0,
        "checkpoints": 12,
        "max_length": 256,
        "learning_rate": None,
        "batch_size": None,
        "precision": "auto",
        "seed": 0,
        "template": "alpaca",
    },
    "target": {
        "model": None,
        "epochs": 1.0,
        "learning_rate": 5e-5,
        "batch_size": 8,
        "grad_accum": 1,
        "max_length": 256,
        "lora": False,
        "precision": "auto",
        "template": "alpaca",
    },
    "evaluation": {
        "metric": "exact_match",
        "max_new_tokens": 96,
        "batch_size": 16,
        "precision": "auto",
        "template": None,
    },
}
_METHOD_KEYS = ("method", "budgets", "seeds", "settings", "label", "stratify", "preset")


@dataclass(frozen=True)
class MethodSpec:
    """One ``methods`` entry: a selection method, its budgets, seeds and constructor settings;
    ``label`` names it in results (default: the method), ``stratify`` (None: the config's
    ``stratify_by``) selects per source or globally, ``preset`` (e.g. ``"reference"``) applies
    a :mod:`smalltolarge.presets` bundle to the selection."""

    method: str
    budgets: tuple[float | int | str, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    stratify: bool | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.method)


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config; paths are resolved, sections filled with defaults."""

    name: str
    out_dir: Path
    pool: Path
    eval: Path
    proxy: dict[str, Any]
    target: dict[str, Any]
    evaluation: dict[str, Any]
    methods: tuple[MethodSpec, ...]
    pool_limit: int | None = None
    eval_per_source: int | None = None
    full_pool: bool = False
    evaluate_base: bool = False
    stratify_by: str | None = None
    keep_models: bool = False
    #: the command that reproduces the experiment (None for a config given as a dict)
    command: str | None = None


@dataclass
class ExperimentResult:
    """Where an experiment wrote its outputs, and every row of ``results.csv``
    (``calibration_md``/``calibration_png`` only for a calibration)."""

    out_dir: Path
    results_csv: Path
    table_md: Path
    plot_png: Path
    rows: list[dict[str, str]]
    comparisons_csv: Path | None = None
    calibration_md: Path | None = None
    calibration_png: Path | None = None


def run_experiment(
    config: str | os.PathLike | dict,
    *,
    out_dir: str | os.PathLike | None = None,
    calibrate: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Run (or resume) the experiment described by ``config``; see the module docstring.

    The whole config, the budgets (against the pool size) and the absence of overlap between
    the eval set and the pool are checked before anything is trained. ``out_dir`` overrides
    the config's. ``calibrate`` runs only random at the smallest and largest budget and the
    full pool, and writes ``calibration.md`` and ``calibration.png`` besides the usual outputs.

    Raises:
        S2LError: an invalid config, an eval set sharing prompts with the pool, results in
            ``out_dir`` made with other settings, or any error of the stages themselves.
    """
    cfg = load_config(config, out_dir=out_dir)
    say = print if progress else _silent
    started = time.perf_counter()
    pool_path, eval_path = _materialise_data(cfg)
    pool, eval_pool = load_pool(pool_path), load_pool(eval_path)
    for spec in cfg.methods:
        for budget in spec.budgets:
            resolve_budget(budget, len(pool))
    check_no_overlap(eval_pool, pool)
    csv_path = cfg.out_dir / "results.csv"
    _check_same_settings(cfg, pool, eval_pool, csv_path)

    runs, notes = _calibration_runs(cfg, len(pool)) if calibrate else (_planned_runs(cfg), [])
    for note in notes:
        say(f"calibrate: {note}")
    rows = _read_rows(csv_path)
    done = {(r["method"], r["budget"], r["seed"]) for r in rows if r["source"] == "all"}
    run_dir = RunDir(cfg.out_dir / "run")
    if any(run.method not in (FULL_POOL, BASE) and run.key not in done for run in runs):
        _train_proxy(cfg, pool_path, run_dir, progress)

    n_skipped = 0
    for k, run in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {run.label}"
        if run.key in done:
            say(f"{label}: already in {csv_path.name}, skipped")
            n_skipped += 1
            continue
        say(f"{label}: started")
        new_rows = _do_run(cfg, run, run_dir, pool_path, eval_path, progress)
        rows += new_rows
        _write_rows(csv_path, rows)
        for overall in (r for r in new_rows if r["source"] == "all"):
            say(
                f"{label}: {overall['metric']} {float(overall['value']):.4g} "
                f"[{float(overall['ci_low']):.4g}, {float(overall['ci_high']):.4g}] on "
                f"{overall['n_eval']} items, n_train {overall['n_train']} "
                f"(train {float(overall['train_seconds']):.0f} s, "
                f"eval {float(overall['eval_seconds']):.0f} s)"
            )

    table_path, png_path = cfg.out_dir / "results.md", cfg.out_dir / "results.png"
    table = write_table(csv_path, command=cfg.command)
    atomic_write_text(table_path, table)
    comparisons_path = write_comparisons(cfg.out_dir)
    plot_results(csv_path, png_path)
    result = ExperimentResult(cfg.out_dir, csv_path, table_path, png_path, rows, comparisons_path)
    say(table)
    if calibrate:
        result.calibration_md = cfg.out_dir / "calibration.md"
        calibration = calibration_markdown(cfg.out_dir)
        if notes:
            calibration += "\n" + "\n".join(f"Note: {note}" for note in notes) + "\n"
        if cfg.command:
            calibration += f"\nProduced by `{cfg.command} --calibrate`.\n"
        atomic_write_text(result.calibration_md, calibration)
        result.calibration_png = plot_calibration(csv_path, cfg.out_dir / "calibration.png")
        say(calibration)
    say(
        f"experiment {cfg.name}: {len(runs)} runs ({n_skipped} skipped) in "
        f"{time.perf_counter() - started:.0f} s; results in {csv_path}, {table_path}, "
        f"{comparisons_path}, {png_path}"
        + (f", {result.calibration_md}, {result.calibration_png}" if calibrate else "")
    )
    return result


def load_config(
    config: str | os.PathLike | dict, *, out_dir: str | os.PathLike | None = None
) -> ExperimentConfig:
    """Read and validate an experiment config (a YAML file or a dict); nothing is written.

    Checks the keys of every section, the selection methods (against
    :data:`~smalltolarge.selection.SELECTORS`) and their settings, and the basic type and range
    of every number, so that a typo fails in a second rather than after the proxy is trained.
    Budgets are checked against the pool later, by :func:`run_experiment`.
    """
    if isinstance(config, dict):
        raw, base, command, default_name = dict(config), Path.cwd(), None, None
    else:
        path = Path(config)
        if not path.is_file():
            raise S2LError(f"{path}: no such config file")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise S2LError(f"{path}: the config must be a mapping of keys to values")
        base, command, default_name = path.parent, f"s2l experiment {config}", path.stem
    if default_name is not None:
        raw.setdefault("name", default_name)
    _check_keys(raw, {*_REQUIRED, *_DEFAULTS, *_SECTIONS}, "the config")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise S2LError(f"the config lacks {', '.join(missing)}")
    values = {**_DEFAULTS, **raw}
    sections = {name: _section(values.get(name), name) for name in _SECTIONS}
    if not sections["target"]["model"]:
        raise S2LError("target.model is required: the model to fine-tune on every subset")
    if sections["evaluation"]["template"] is None:
        sections["evaluation"]["template"] = sections["target"]["template"]
    _check_sections(sections)

    name = str(values["name"])
    methods = tuple(
        _method_spec(entry, k) for k, entry in enumerate(_as_list(values["methods"], "methods"))
    )
    if not methods and not values["full_pool"]:
        raise S2LError("the config has no methods and full_pool is false: nothing to run")
    _check_labels(methods)
    for key in ("pool_limit", "eval_per_source"):
        if values[key] is not None:
            _check_positive_int(values[key], key)
    for key in ("full_pool", "evaluate_base", "keep_models"):
        if not isinstance(values[key], bool):
            raise S2LError(f"{key} must be true or false, not {values[key]!r}")
    chosen_out = out_dir if out_dir is not None else values["out_dir"]
    return ExperimentConfig(
        name=name,
        out_dir=Path(chosen_out) if chosen_out is not None else Path("runs/experiments") / name,
        pool=_data_path(values["pool"], base, "pool"),
        eval=_data_path(values["eval"], base, "eval"),
        proxy=sections["proxy"],
        target=sections["target"],
        evaluation=sections["evaluation"],
        methods=methods,
        pool_limit=values["pool_limit"],
        eval_per_source=values["eval_per_source"],
        full_pool=values["full_pool"],
        evaluate_base=values["evaluate_base"],
        stratify_by=values["stratify_by"],
        keep_models=values["keep_models"],
        command=command,
    )


def _check_keys(given: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise S2LError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


def _section(value: Any, name: str) -> dict[str, Any]:
    defaults = _SECTIONS[name]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise S2LError(f"{name} must be a mapping of settings, not {value!r}")
    _check_keys(value, set(defaults), name)
    return {**defaults, **value}


def _check_sections(sections: dict[str, dict[str, Any]]) -> None:
    proxy, target, evaluation = sections["proxy"], sections["target"], sections["evaluation"]
    for section, keys in (
        ("proxy", ("checkpoints", "max_length", "batch_size")),
        ("target", ("batch_size", "grad_accum", "max_length")),
        ("evaluation", ("max_new_tokens", "batch_size")),
    ):
        for key in keys:
            if sections[section][key] is not None:
                _check_positive_int(sections[section][key], f"{section}.{key}")
    for section, keys in (("proxy", ("epochs", "learning_rate")), ("target", ("epochs",))):
        for key in keys:
            value = sections[section][key]
            if value is not None and not (_is_number(value) and value > 0):
                raise S2LError(f"{section}.{key} must be a positive number, not {value!r}")
    if not (_is_number(target["learning_rate"]) and target["learning_rate"] > 0):
        raise S2LError(
            f"target.learning_rate must be a positive number, not {target['learning_rate']!r}"
        )
    for section in sections.values():
        if "precision" in section and section["precision"] not in PRECISIONS:
            raise S2LError(
                f"precision {section['precision']!r} is not one of {', '.join(PRECISIONS)}"
            )
        if section.get("template") not in (None, *TEMPLATES):
            raise S2LError(f"template {section['template']!r} is not one of {', '.join(TEMPLATES)}")
    if evaluation["metric"] not in METRICS:
        raise S2LError(f"evaluation.metric must be one of {', '.join(METRICS)}")
    if not isinstance(target["lora"], bool):
        raise S2LError(f"target.lora must be true or false, not {target['lora']!r}")
    if not isinstance(proxy["seed"], int) or isinstance(proxy["seed"], bool):
        raise S2LError(f"proxy.seed must be an integer, not {proxy['seed']!r}")


def _method_spec(entry: Any, k: int) -> MethodSpec:
    where = f"methods[{k}]"
    if not isinstance(entry, dict):
        raise S2LError(f"{where} must be a mapping with method, budgets, seeds, settings")
    _check_keys(entry, set(_METHOD_KEYS), where)
    method = entry.get("method")
    if method not in SELECTORS or method in (FULL_POOL, BASE):
        raise S2LError(
            f"{where}: unknown selection method {method!r}; known: {', '.join(sorted(SELECTORS))}"
        )
    budgets = tuple(_as_list(entry.get("budgets"), f"{where}.budgets"))
    seeds = tuple(_as_list(entry.get("seeds", [0]), f"{where}.seeds"))
    if not budgets or not seeds:
        raise S2LError(f"{where}: budgets and seeds must not be empty")
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int | float | str):
            raise S2LError(f"{where}: budget {budget!r} is neither a fraction nor a count")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise S2LError(f"{where}: seed {seed!r} is not a non-negative integer")
    if len({str(b) for b in budgets}) < len(budgets) or len(set(seeds)) < len(seeds):
        raise S2LError(f"{where}: a budget or seed is listed twice")
    settings = entry.get("settings") or {}
    if not isinstance(settings, dict):
        raise S2LError(f"{where}.settings must be a mapping, not {settings!r}")
    make_selector(method, **settings)  # refuses settings the method does not take, now
    label = entry.get("label", method)
    if not isinstance(label, str) or not _LABEL.fullmatch(label) or label in (FULL_POOL, BASE):
        raise S2LError(
            f"{where}.label {label!r} must be a name of letters, digits and . _ + - "
            f"(it names run directories), other than {FULL_POOL} and {BASE}"
        )
    if label == RANDOM and method != RANDOM:
        raise S2LError(f"{where}: the label {RANDOM!r} is the baseline's; use another label")
    stratify = entry.get("stratify")
    if stratify is not None and not isinstance(stratify, bool):
        raise S2LError(f"{where}.stratify must be true or false, not {stratify!r}")
    preset = entry.get("preset")
    if preset is not None and preset not in PRESETS:
        raise S2LError(f"{where}.preset {preset!r} is not one of {', '.join(PRESETS)}")
    return MethodSpec(method, budgets, seeds, dict(settings), label, stratify, preset)


def _check_labels(methods: tuple[MethodSpec, ...]) -> None:
    """Entries may share a label (budgets split over entries) only with the same selection."""
    first: dict[str, MethodSpec] = {}
    for spec in methods:
        other = first.setdefault(spec.label, spec)
        if (other.method, other.settings, other.stratify, other.preset) != (
            spec.method,
            spec.settings,
            spec.stratify,
            spec.preset,
        ):
            raise S2LError(
                f"two methods entries are labelled {spec.label!r} but select differently "
                "(method, settings or stratify); give them different labels"
            )


def _as_list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        return [value]
    return list(value)


def _check_positive_int(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise S2LError(f"{where} must be a positive integer, not {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _data_path(value: Any, base: Path, key: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise S2LError(f"{key} must be a path or one of {', '.join(BUNDLED)}, not {value!r}")
    if str(value).startswith("bundled:"):
        if value not in BUNDLED:
            raise S2LError(f"{key}: unknown bundled data {value!r}; known: {', '.join(BUNDLED)}")
        return BUNDLED[value]
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _materialise_data(cfg: ExperimentConfig) -> tuple[Path, Path]:
    """The pool and eval files to use: the configured ones, or their cut-down copies in OUT."""
    pool_path, eval_path = cfg.pool, cfg.eval
    if cfg.pool_limit is not None:
        lines = _jsonl_lines(cfg.pool, "pool_limit")
        if len(lines) < cfg.pool_limit:
            raise S2LError(
                f"pool_limit {cfg.pool_limit}, but {cfg.pool} has only {len(lines)} examples"
            )
        pool_path = cfg.out_dir / "pool.jsonl"
        _write_if_changed(pool_path, b"".join(lines[: cfg.pool_limit]))
    if cfg.eval_per_source is not None:
        lines = _jsonl_lines(cfg.eval, "eval_per_source")
        full = load_pool(cfg.eval)
        if not full.has_sources:
            raise S2LError(f"eval_per_source: {cfg.eval} has no source column")
        taken: dict[str, int] = {}
        keep = []
        for row, source in zip(full.dataset["row"], full.sources(), strict=True):
            if taken.get(source, 0) < cfg.eval_per_source:
                taken[source] = taken.get(source, 0) + 1
                keep.append(row)
        eval_path = cfg.out_dir / "eval.jsonl"
        _write_if_changed(eval_path, b"".join(lines[row] for row in keep))
    return pool_path, eval_path


def _jsonl_lines(path: Path, key: str) -> list[bytes]:
    """The non-blank lines of a JSONL file, byte for byte (newline-terminated), by record."""
    if path.suffix != ".jsonl":
        raise S2LError(f"{key} needs a JSONL file; {path} is not one")
    return [
        line if line.endswith(b"\n") else line + b"\n"
        for _, _, line in _iter_jsonl_lines(os.fspath(path))
    ]


def _write_if_changed(path: Path, content: bytes) -> None:
    # An unchanged file keeps its mtime, so a resumed experiment looks exactly as it left off.
    if path.is_file() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def check_no_overlap(eval_pool: Pool, pool: Pool) -> None:
    """Refuse an eval set that shares a prompt with the training pool.

    Prompts are compared as instruction + input (+ chat turns), whitespace-collapsed and
    case-folded, so a re-formatted copy of a training item is caught too.

    Raises:
        S2LError: naming the number of overlapping eval items and the first pair of ids.
    """
    pool_ids = dict(zip(_prompt_keys(pool), pool.ids, strict=True))
    overlap = [
        (eval_id, pool_ids[key])
        for key, eval_id in zip(_prompt_keys(eval_pool), eval_pool.ids, strict=True)
        if key in pool_ids
    ]
    if overlap:
        eval_id, pool_id = overlap[0]
        raise S2LError(
            f"{len(overlap)} of the {len(eval_pool)} eval items share a prompt with the pool "
            f"(first: eval id {eval_id} = pool id {pool_id}); a held-out set must be disjoint "
            "from the training pool"
        )


def _prompt_keys(pool: Pool) -> list[str]:
    columns = (pool.dataset[c] for c in ("instruction", "input", "messages"))
    return [" ".join("\n".join(parts).split()).casefold() for parts in zip(*columns, strict=True)]


def _check_same_settings(cfg: ExperimentConfig, pool: Pool, eval_pool: Pool, csv: Path) -> None:
    """Refuse to add to results made with other data or settings: a resumed experiment would
    otherwise silently mix them in one table. Adding methods, budgets or seeds is fine."""
    meta_path = cfg.out_dir / "experiment.json"
    shared = fingerprint(
        pool.fingerprint, eval_pool.fingerprint, cfg.proxy, cfg.target, cfg.evaluation,
        cfg.stratify_by,
    )  # fmt: skip
    # By label: the same label must keep meaning the same selection across resumes.
    entries = {
        spec.label: {
            "method": spec.method,
            "settings": spec.settings,
            "stratify_by": _stratify_by(cfg, spec),
            # only when set, so that results made before the key existed still resume
            **({"preset": spec.preset} if spec.preset else {}),
        }
        for spec in cfg.methods
    }
    if csv.is_file() and meta_path.is_file():
        saved = read_json(meta_path)
        changed = [m for m, e in saved.get("methods", {}).items() if entries.get(m, e) != e]
        if saved.get("fingerprint") != shared or changed:
            what = f"the settings of {', '.join(changed)}" if changed else "the data or settings"
            raise S2LError(
                f"{csv} holds results made with other {what.removeprefix('the ')}; "
                "use another out_dir, or delete results.csv to start over"
            )
        entries = {**saved.get("methods", {}), **entries}
    atomic_write_json(meta_path, {"name": cfg.name, "fingerprint": shared, "methods": entries})


def _stratify_by(cfg: ExperimentConfig, spec: MethodSpec) -> str | None:
    if spec.stratify is None:
        return cfg.stratify_by
    return (cfg.stratify_by or "source") if spec.stratify else None


@dataclass(frozen=True)
class _Run:
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


def _planned_runs(cfg: ExperimentConfig) -> list[_Run]:
    runs = [_Run(BASE, "0", None)] if cfg.evaluate_base else []
    for spec in cfg.methods:
        for budget in spec.budgets:
            for seed in spec.seeds:
                runs.append(_method_run(cfg, spec, budget, seed))
    if cfg.full_pool:
        first_seed = cfg.methods[0].seeds[0] if cfg.methods else 0
        runs.append(_Run(FULL_POOL, "1.0", first_seed))
    seen: set[tuple[str, str, str]] = set()
    for run in runs:
        if run.key in seen:
            raise S2LError(f"the run {run.label} is listed twice in methods")
        seen.add(run.key)
    return runs


def _method_run(cfg: ExperimentConfig, spec: MethodSpec, budget: Any, seed: int) -> _Run:
    return _Run(
        spec.label,
        str(budget),
        seed,
        budget,
        spec.settings,
        spec.method,
        _stratify_by(cfg, spec),
        spec.preset,
    )


def _calibration_runs(cfg: ExperimentConfig, n_pool: int) -> tuple[list[_Run], list[str]]:
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
        _method_run(cfg, spec, budget, seed)
        for budget in dict.fromkeys([smallest, largest])
        for seed in seeds
    ]
    return runs + [_Run(FULL_POOL, "1.0", first_seed)], notes


def _train_proxy(cfg: ExperimentConfig, pool_path: Path, run_dir: RunDir, progress: bool) -> None:
    """Prepare, train and score the proxy; each stage is skipped when already up to date."""
    proxy = cfg.proxy
    prepare(
        pool_path,
        run_dir,
        proxy=proxy["name"],
        template=proxy["template"],
        max_length=proxy["max_length"],
        progress=progress,
    )
    train_proxy(
        run_dir,
        epochs=proxy["epochs"],
        learning_rate=proxy["learning_rate"],
        batch_size=proxy["batch_size"],
        n_checkpoints=proxy["checkpoints"],
        seed=proxy["seed"],
        precision=proxy["precision"],
        progress=progress,
    )
    score_trajectories(run_dir, precision=proxy["precision"], progress=progress)


def _do_run(
    cfg: ExperimentConfig,
    run: _Run,
    run_dir: RunDir,
    pool_path: Path,
    eval_path: Path,
    progress: bool,
) -> list[dict[str, str]]:
    """Select, fine-tune and evaluate one run; return its results.csv rows ("all" first)."""
    started = time.perf_counter()
    target = cfg.target
    model_out = cfg.out_dir / "models" / run.name
    if run.method == BASE:
        model_dir, n_train, train_seconds = Path(target["model"]), 0, 0.0
    else:
        if run.method == FULL_POOL:
            train_data: Path = pool_path
        else:
            settings = dict(run.settings)
            # select_subset takes S2L's K as its own argument, not among the settings
            n_clusters = settings.pop("n_clusters", None)
            train_data = select_subset(
                run_dir,
                method=run.selector,
                budget=run.budget_value,
                seed=run.seed,
                n_clusters=n_clusters,
                stratify_by=run.stratify_by,
                settings=settings,
                preset=run.preset,
                name=run.name,
            ).directory
        train_started = time.perf_counter()
        tuned = finetune(
            target["model"],
            train_data,
            model_out,
            template=target["template"],
            max_length=target["max_length"],
            epochs=target["epochs"],
            learning_rate=target["learning_rate"],
            batch_size=target["batch_size"],
            grad_accum=target["grad_accum"],
            lora=target["lora"],
            precision=target["precision"],
            seed=run.seed,
            progress=progress,
        )
        train_seconds = time.perf_counter() - train_started
        model_dir, n_train = tuned.model_dir, tuned.n_train

    results = _evaluate_run(cfg, model_dir, eval_path, cfg.out_dir / "eval" / run.name, progress)
    if run.method != BASE and not cfg.keep_models:
        # finetune.json and the eval outputs stay; the weights (0.5 GB for 135M) go
        shutil.rmtree(model_dir, ignore_errors=True)

    common = {
        "method": run.method,
        "budget": run.budget,
        "seed": run.key[2],
        "n_train": str(n_train),
        "train_seconds": f"{train_seconds:.1f}",
        "wall_seconds": f"{time.perf_counter() - started:.1f}",
    }
    rows = []
    for result, eval_seconds in results:
        macro = getattr(result, "macro", None)
        scores = {"all": result.overall, **({"macro": macro} if macro else {}), **result.per_source}
        rows += [
            {
                **common,
                "metric": result.metric,
                "value": f"{s['mean']:.6g}",
                "ci_low": f"{s['ci_low']:.6g}",
                "ci_high": f"{s['ci_high']:.6g}",
                # the macro mean is over sources, but of the same items
                "n_eval": str(int(result.overall["n"] if source == "macro" else s["n"])),
                "source": source,
                "eval_seconds": f"{eval_seconds:.1f}",
            }
            for source, s in scores.items()
        ]
    return rows


def _evaluate_run(
    cfg: ExperimentConfig, model_dir: Path, eval_path: Path, out: Path, progress: bool
) -> list[tuple[Any, float]]:
    """The generation metric (unless ``evaluation.metric`` is ``loss``) and the held-out loss
    of one model, each with its seconds; per-item results go to ``out``."""
    evaluation, results = cfg.evaluation, []
    metrics = [LOSS] if evaluation["metric"] == LOSS else [evaluation["metric"], LOSS]
    for metric in metrics:
        eval_started = time.perf_counter()
        result = evaluate(
            model_dir,
            eval_path,
            out,
            template=evaluation["template"],
            metric=metric,
            max_new_tokens=evaluation["max_new_tokens"],
            batch_size=evaluation["batch_size"],
            precision=evaluation["precision"],
            # the loss is taken as fine-tuning sees the data
            max_length=cfg.target["max_length"],
            progress=progress,
        )
        results.append((result, time.perf_counter() - eval_started))
    return results


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
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


def _write_rows(csv_path: Path, rows: list[dict[str, str]]) -> None:
    # The whole file each time, through a rename: an interruption leaves the old file or the
    # new one, never half a row.
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buffer.getvalue())


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
    for row in _read_rows(Path(csv_path)):
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


def _budget_number(budget: str) -> float:
    """A budget as a number for sorting and plotting: ``"30%"`` -> 0.3, ``"300"`` -> 300."""
    text = budget.strip()
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


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
    summaries.sort(key=lambda s: (last.get(s.method, order[s.method]), _budget_number(s.budget)))
    lines: list[str] = []
    for metric in _metrics(summaries):
        lines += _metric_table([s for s in summaries if s.metric == metric], metric)
    out_dir = Path(results_csv).parent
    if (out_dir / "eval").is_dir():
        lines += [comparisons_markdown(out_dir).rstrip("\n"), ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


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
    rows = [r for r in _read_rows(Path(results_csv)) if r["source"] == "all"]
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
            (s for s in summaries if s.method == method), key=lambda s: _budget_number(s.budget)
        )
        ax.errorbar(
            [_budget_number(s.budget) for s in points],
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
            (r for r in rows if r["method"] == method), key=lambda r: _budget_number(r["budget"])
        )
        x = np.array([_budget_number(r["budget"]) for r in mine])
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
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, png)
    return png


def _silent(*args: Any, **kwargs: Any) -> None:
    pass
