"""The experiment config: its keys, their defaults, and the checks that run before anything
is trained.

Config keys (YAML file or dict; an unknown key at any level is an error). The proxy, target and
evaluation sections are the stages' own settings (:mod:`smalltolarge.settings`), with the same
defaults and checks as ``s2l train-proxy``, ``s2l finetune`` and ``s2l evaluate``::

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
      max_length: 512
      learning_rate: null            # null: the preset's / S2L's reference value
      batch_size: null
      grad_accum: 1                  # effective batch = batch_size x grad_accum
      precision: auto                # auto, fp32, bf16, fp16
      seed: 0
      template: alpaca
    target:                          # the model fine-tuned on every subset
      model: smollm2-135m            # a HF name, local directory or offline short name
      epochs: 3
      learning_rate: 2.0e-5
      batch_size: 8
      grad_accum: 1
      max_length: 512
      lora: false
      precision: auto
      template: alpaca
    evaluation:
      metric: auto                   # exact_match, rouge_l or auto: generate and score, plus
                                     # the held-out loss; loss: the held-out loss alone (no
                                     # generation: fast)
      max_new_tokens: 256
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
    probe: false                     # probe the untrained target on a sample of the pool
                                     # (s2l probe) and report the proxy's fit in every
                                     # selection summary; done anyway when a method needs it
                                     # (s2l-checked)

Relative ``pool`` and ``eval`` paths resolve against the config file's directory (the cwd for a
dict). Budgets are fractions of the pool (``0.1``, ``"10%"``) or counts (``300``); seeds seed
both the selection and the fine-tuning (see :mod:`smalltolarge.experiment` for what is
written where).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smalltolarge.compare import BASE, FULL_POOL, RANDOM
from smalltolarge.demo_data import DEMO_EVAL, DEMO_POOL
from smalltolarge.errors import S2LError
from smalltolarge.presets import PRESETS
from smalltolarge.runs import output_dir
from smalltolarge.selection import SELECTORS, make_selector
from smalltolarge.settings import (
    PRECISIONS,
    EvalSettings,
    FinetuneSettings,
    PrepareSettings,
    ProxySettings,
    SelectSettings,
    StageSettings,
    budget_label,
    check_keys,
    parse_budget,
)

__all__ = ["BUNDLED", "PRECISIONS", "ExperimentConfig", "MethodSpec", "load_config"]

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

BUNDLED = {"bundled:demo_pool": DEMO_POOL, "bundled:demo_eval": DEMO_EVAL}

_DEFAULTS: dict[str, Any] = {
    "out_dir": None,
    "pool_limit": None,
    "eval_per_source": None,
    "methods": [],
    "full_pool": False,
    "evaluate_base": False,
    "stratify_by": None,
    "keep_models": False,
    "probe": False,
}
_REQUIRED = ("name", "pool", "eval")
#: The three stage sections of a config: each key names a field of a stage's settings
#: (:mod:`smalltolarge.settings`), which holds its default and its check.
_SECTIONS: dict[str, dict[str, tuple[type[StageSettings], str]]] = {
    "proxy": {
        "name": (PrepareSettings, "proxy"),
        "template": (PrepareSettings, "template"),
        "max_length": (PrepareSettings, "max_length"),
        "assistant_turns": (PrepareSettings, "assistant_turns"),
        "epochs": (ProxySettings, "epochs"),
        "checkpoints": (ProxySettings, "n_checkpoints"),
        "learning_rate": (ProxySettings, "learning_rate"),
        "batch_size": (ProxySettings, "batch_size"),
        "grad_accum": (ProxySettings, "grad_accum"),
        "precision": (ProxySettings, "precision"),
        "seed": (ProxySettings, "seed"),
    },
    "target": {
        "model": (FinetuneSettings, ""),  # required, checked by load_config
        **{
            key: (FinetuneSettings, key)
            for key in ("epochs", "learning_rate", "batch_size", "grad_accum", "max_length")
        },
        **{key: (FinetuneSettings, key) for key in ("lora", "precision", "template")},
    },
    "evaluation": {
        key: (EvalSettings, key)
        for key in ("metric", "max_new_tokens", "batch_size", "precision", "template")
    },
}


_METHOD_KEYS = (
    "method",
    "budgets",
    "seeds",
    "settings",
    "label",
    "stratify",
    "preset",
    "target_set",
    "target_weight",
)


@dataclass(frozen=True)
class MethodSpec:
    """One ``methods`` entry: a selection method, its budgets, seeds and constructor settings;
    ``label`` names it in results (default: the method), ``stratify`` (None: the config's
    ``stratify_by``) selects per source or globally, ``preset`` (e.g. ``"reference"``) applies
    a :mod:`smalltolarge.presets` bundle to the selection; ``target_set`` (S2L, selecting
    globally) steers the quotas toward a target set's clusters by ``target_weight``."""

    method: str
    budgets: tuple[float | int | str, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    stratify: bool | None = None
    preset: str | None = None
    target_set: Path | None = None
    target_weight: float = SelectSettings.target_weight

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
    probe: bool = False
    #: the command that reproduces the experiment (None for a config given as a dict)
    command: str | None = None

    def stage_kwargs(self, section: str, stage: type[StageSettings]) -> dict[str, Any]:
        """The settings of ``section`` (``proxy``, ``target``, ``evaluation``) that belong to
        ``stage``, under the stage's own names: keyword arguments for its function."""
        values = getattr(self, section)
        return {
            attr: values[key]
            for key, (owner, attr) in _SECTIONS[section].items()
            if owner is stage and attr
        }

    def stratify_column(self, spec: MethodSpec) -> str | None:
        """The column ``spec`` selects per (None: globally): its ``stratify``, else the
        config's ``stratify_by``."""
        if spec.stratify is None:
            return self.stratify_by
        return (self.stratify_by or "source") if spec.stratify else None


def load_config(
    config: str | os.PathLike | dict, *, out_dir: str | os.PathLike | None = None
) -> ExperimentConfig:
    """Read and validate an experiment config (a YAML file or a dict); nothing is written.

    Checks the keys of every section, the selection methods (against
    :data:`~smalltolarge.selection.SELECTORS`) and their settings, and the basic type and range
    of every number, so that a typo fails in a second rather than after the proxy is trained.
    Budgets are checked against the pool later, by :func:`~smalltolarge.experiment.run_experiment`.
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
    check_keys(raw, {*_REQUIRED, *_DEFAULTS, *_SECTIONS}, "the config")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise S2LError(f"the config lacks {', '.join(missing)}")
    values = {**_DEFAULTS, **raw}
    evaluation_template = None
    if isinstance(values.get("evaluation"), dict):  # null or absent: the target's template
        values["evaluation"] = dict(values["evaluation"])
        evaluation_template = values["evaluation"].pop("template", None)
        if evaluation_template is not None:
            values["evaluation"]["template"] = evaluation_template
    sections = {name: _section(values.get(name), name) for name in _SECTIONS}
    if not sections["target"]["model"]:
        raise S2LError("target.model is required: the model to fine-tune on every subset")
    if evaluation_template is None:  # as the target was trained
        sections["evaluation"]["template"] = sections["target"]["template"]

    name = str(values["name"])
    methods = tuple(
        _method_spec(entry, k, base)
        for k, entry in enumerate(_as_list(values["methods"], "methods"))
    )
    if not methods and not values["full_pool"]:
        raise S2LError("the config has no methods and full_pool is false: nothing to run")
    _check_labels(methods)
    for spec in methods:
        if spec.target_set and (spec.stratify or (spec.stratify is None and values["stratify_by"])):
            raise S2LError(
                f"methods entry {spec.label!r}: a target set steers s2l selecting globally; "
                "give it stratify: false"
            )
    for key in ("pool_limit", "eval_per_source"):
        if values[key] is not None:
            _check_positive_int(values[key], key)
    for key in ("full_pool", "evaluate_base", "keep_models", "probe"):
        if not isinstance(values[key], bool):
            raise S2LError(f"{key} must be true or false, not {values[key]!r}")
    chosen_out = out_dir if out_dir is not None else values["out_dir"]
    return ExperimentConfig(
        name=name,
        out_dir=output_dir(
            chosen_out if chosen_out is not None else Path("runs/experiments") / name,
            "-o" if out_dir is not None else "out_dir",
        ),
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
        probe=values["probe"],
        command=command,
    )


def _section(value: Any, name: str) -> dict[str, Any]:
    """A config section as ``{key: value}``: unknown keys refused, every value defaulted and
    checked by the stage settings it belongs to (the message names the section)."""
    keys = _SECTIONS[name]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise S2LError(f"{name} must be a mapping of settings, not {value!r}")
    check_keys(value, set(keys), name)
    out: dict[str, Any] = {}
    for cls in dict.fromkeys(cls for cls, _ in keys.values()):
        mine = {key: attr for key, (owner, attr) in keys.items() if owner is cls and attr}
        try:
            settings = cls(**{attr: value[key] for key, attr in mine.items() if key in value})
        except S2LError as e:
            raise S2LError(f"{name}: {e}") from None
        out.update({key: getattr(settings, attr) for key, attr in mine.items()})
    return {key: value.get(key) if not attr else out[key] for key, (_, attr) in keys.items()}


def _method_spec(entry: Any, k: int, base: Path) -> MethodSpec:
    where = f"methods[{k}]"
    if not isinstance(entry, dict):
        raise S2LError(f"{where} must be a mapping with method, budgets, seeds, settings")
    check_keys(entry, set(_METHOD_KEYS), where)
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
    for budget in budgets:
        parse_budget(budget, where)
    if len({budget_label(b) for b in budgets}) < len(budgets) or len(set(seeds)) < len(seeds):
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
    target_set = entry.get("target_set")
    target_weight = entry.get("target_weight", SelectSettings.target_weight)
    try:
        SelectSettings(method=method, target_set=target_set, target_weight=target_weight)
    except S2LError as e:
        raise S2LError(f"{where}: {e}") from None
    if target_set is not None:
        if method != "s2l" or stratify or preset:
            raise S2LError(f"{where}: a target set steers s2l selecting globally (stratify: false)")
        target_set = _data_path(target_set, base, f"{where}.target_set")
    return MethodSpec(
        method, budgets, seeds, dict(settings), label, stratify, preset, target_set, target_weight
    )


def _check_labels(methods: tuple[MethodSpec, ...]) -> None:
    """Entries may share a label (budgets split over entries) only with the same selection."""
    first: dict[str, MethodSpec] = {}
    for spec in methods:
        other = first.setdefault(spec.label, spec)
        if (other.method, other.settings, other.stratify, other.preset, other.target_set) != (
            spec.method,
            spec.settings,
            spec.stratify,
            spec.preset,
            spec.target_set,
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
