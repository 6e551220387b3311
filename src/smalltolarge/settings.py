"""Every setting of every stage: its one default and its one check.

Each stage has a frozen dataclass whose fields are its settings with their defaults;
constructing one validates every field (``__post_init__``), so a bad value is refused in one
place, with one message, before any work starts. The stage functions read their keyword
defaults from these classes and validate by building one; the CLI options take their defaults
from the same fields; ``s2l experiment``'s YAML sections are read with :meth:`from_mapping`
(unknown keys refused, the known ones listed). Nothing here imports torch or transformers, so
``s2l --help`` stays fast.

==========================  ===========================================================
class                       stage
==========================  ===========================================================
:class:`PrepareSettings`    load the pool, format, tokenise (``s2l prepare``)
:class:`ProxySettings`      train the proxy and record trajectories (``s2l train-proxy``)
:class:`ScoreSettings`      score saved checkpoints (``s2l score``)
:class:`SelectSettings`     select a subset (``s2l select``)
:class:`ProbeSettings`      probe the target before fine-tuning (``s2l probe``)
:class:`FinetuneSettings`   fine-tune the target on a subset (``s2l finetune``)
:class:`EvalSettings`       evaluate a model on an eval set (``s2l evaluate``)
==========================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from smalltolarge.errors import S2LError

#: Where a run's artifacts go when no ``--run-dir`` is given.
DEFAULT_RUN_DIR = Path("runs/default")
#: Numeric precisions: ``auto`` is bf16 where the device runs it fast, else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Prompt formats (see :mod:`smalltolarge.formatting`).
TEMPLATES = ("alpaca", "alpaca-reference", "chat")
#: Which assistant turns of a multi-turn chat the loss covers (see :mod:`smalltolarge.formatting`):
#: every one, as trainers learn them by default, or the last one only (the response).
ASSISTANT_TURNS = ("all", "last")
#: What to do with an invalid example: refuse the pool, or drop and report it.
ON_INVALID = ("error", "skip")
#: Tokens per example (prompt + response), for the proxy and the target alike.
DEFAULT_MAX_LENGTH = 512
#: Real tokens per scoring batch: small batches of similar length kept the CPU's caches warm
#: (see benchmarks/scoring.py); GPUs want more.
DEFAULT_MAX_TOKENS = 4096
#: Tokens per (checkpoint, chunk) unit of scoring: the work lost to a kill, and the grain of
#: the split between processes.
DEFAULT_CHUNK_TOKENS = 1 << 20
#: Duplicate detection compares the prompt (instruction + input), the response, or both.
DEDUP_ON = ("prompt", "response", "both")
#: The Jaccard similarity of character shingles from which two examples are near duplicates.
DEFAULT_DEDUP_THRESHOLD = 0.8
#: How far a target set moves S2L's cluster quotas toward its clusters, in [0, 1].
DEFAULT_TARGET_WEIGHT = 0.5

S = TypeVar("S", bound="StageSettings")


# --- checks, one per kind of value ----------------------------------------------------------

#: How the user spelled each setting, while a command runs (see :func:`spelled_as`).
_SPELLING: ContextVar[Mapping[str, str] | None] = ContextVar("spelling", default=None)


@contextmanager
def spelled_as(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, the checks below name a setting as the user typed it: ``names`` maps
    a setting's name to its spelling (``s2l dedup`` gives ``dedup_threshold`` as
    ``--threshold``). The settings are still checked here, once; only the name in the message
    changes, so a command-line user is not told about a field they never typed."""
    token = _SPELLING.set({**(_SPELLING.get() or {}), **names})
    try:
        yield
    finally:
        _SPELLING.reset(token)


def _spelled(name: str) -> str:
    return (_SPELLING.get() or {}).get(name, name)


def check_positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` is an int >= 1 (or None when ``optional``), else S2LError."""
    name = _spelled(name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise S2LError(f"{name} must be a positive integer (>= 1), not {value!r}")


def check_non_negative_int(name: str, value: Any) -> None:
    """``value`` is an int >= 0, else S2LError."""
    name = _spelled(name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise S2LError(f"{name} must be an integer >= 0, not {value!r}")


def check_positive(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` is a finite number > 0 (or None when ``optional``), else S2LError."""
    name = _spelled(name)
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise S2LError(f"{name} must be positive, not {value!r}")


def check_non_negative(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` is a finite number >= 0 (or None when ``optional``), else S2LError."""
    name = _spelled(name)
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not value >= 0
    ):
        raise S2LError(f"{name} must be >= 0, not {value!r}")


def check_in_range(name: str, value: Any, low: float, high: float, *, closed: str = "[)") -> None:
    """``value`` is a number in the interval ``low``..``high`` (``closed`` says which ends
    belong to it: ``"[)"``, ``"(]"``, ``"[]"``, ``"()"``), else S2LError."""
    name = _spelled(name)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        above = value >= low if closed[0] == "[" else value > low
        below = value <= high if closed[1] == "]" else value < high
        ok = above and below
    if not ok:
        raise S2LError(f"{name} must be in {closed[0]}{low}, {high}{closed[1]}, not {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...], *, optional: bool = False):
    """``value`` is one of ``choices`` (or None when ``optional``), else S2LError."""
    name = _spelled(name)
    if value is None and optional:
        return
    if value not in choices:
        raise S2LError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def check_precision(name: str, value: Any, *, optional: bool = False) -> None:
    """One of :data:`PRECISIONS` (or None when ``optional``), else S2LError."""
    name = _spelled(name)
    if value is None and optional:
        return
    if value not in PRECISIONS:
        raise S2LError(f"{name} must be auto, fp32, bf16 or fp16, not {value!r}")


def check_max_length(value: Any) -> None:
    """Tokens per example: an integer >= 2 (a prompt token and a response token)."""
    check_positive_int("max_length", value)
    if value < 2:
        raise S2LError(f"max_length must be at least 2, not {value}")


def check_bool(name: str, value: Any) -> None:
    """``value`` is True or False, else S2LError."""
    name = _spelled(name)
    if not isinstance(value, bool):
        raise S2LError(f"{name} must be true or false, not {value!r}")


def check_name(name: str, value: Any, *, optional: bool = False) -> None:
    """A non-empty string (a model name, a column, a path), or None when ``optional``."""
    name = _spelled(name)
    if value is None and optional:
        return
    if not isinstance(value, str | Path) or not str(value).strip():
        raise S2LError(f"{name} must be a non-empty name, not {value!r}")


# --- budgets: one parser, one spelling ------------------------------------------------------


def parse_budget(budget: Any, context: str = "") -> tuple[float | None, int | None]:
    """``(fraction, None)`` or ``(None, count)`` for a user budget: a fraction (a float, a
    string with a decimal point such as ``"0.3"``, or a percentage ``"30%"``) or a count (an
    int or a string of digits). Ranges are checked against the pool later
    (:func:`smalltolarge.selection.resolve_budget`); this refuses what is not a budget at all.
    ``context`` is appended to the message (e.g. the pool's size)."""
    tail = f"; {context}" if context else ""
    if isinstance(budget, bool):
        raise S2LError(f"budget {budget!r} is not a number{tail}")
    if isinstance(budget, numbers.Integral):
        return None, int(budget)
    if isinstance(budget, numbers.Real):
        value = float(budget)
        if not math.isfinite(value):
            raise S2LError(f"budget {budget!r} is not a finite number{tail}")
        return value, None
    if isinstance(budget, str):
        text = budget.strip()
        try:
            if text.endswith("%"):
                return float(text[:-1]) / 100.0, None
            if "." in text or "e" in text.lower():
                return float(text), None
            return None, int(text)
        except ValueError:
            pass
    raise S2LError(
        f"budget {budget!r} is not a number: give a count (e.g. 1000), a fraction (e.g. 0.3) "
        f"or a percentage (e.g. 30%){tail}"
    )


def budget_label(budget: Any) -> str:
    """One spelling per budget, for names and tables: ``0.30``, ``0.3`` and ``"30%"`` are
    ``0.3``; a count stays a count (``3000``)."""
    fraction, count = parse_budget(budget)
    return repr(fraction) if fraction is not None else str(count)


def budget_value(budget: Any) -> float:
    """A budget as a number for a plot axis: the fraction, or the count as a float."""
    fraction, count = parse_budget(budget)
    return float(fraction if fraction is not None else count)  # type: ignore[arg-type]


# --- the stages' settings -------------------------------------------------------------------


class StageSettings:
    """What every stage's settings share: build from a mapping (unknown keys refused),
    replace some fields (validated again), and list the fields."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls: type[S], values: Mapping[str, Any] | None, where: str) -> S:
        """Settings from a mapping (a YAML section): unknown keys are refused with the list of
        known ones, missing ones take their defaults, every value is checked."""
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise S2LError(f"{where} must be a mapping of settings, not {values!r}")
        check_keys(values, set(cls.names()), where)
        return cls(**values)

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def check_keys(given: Mapping[str, Any], known: set[str], where: str) -> None:
    """Refuse keys of ``given`` not in ``known``, naming them and the known ones."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise S2LError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


@dataclass(frozen=True)
class PrepareSettings(StageSettings):
    """Loading, formatting and tokenising the pool (``s2l prepare``).

    ``proxy``: a preset (``tiny``, ``small``, ``medium``) or a HF causal LM name or path, whose
    tokenizer is used; ``template``: the prompt format; ``max_length``: tokens per example
    (prompt + response); the ``*_column`` fields name the pool's columns (None: detected);
    ``split``: the split of a hub dataset; ``on_invalid``: refuse the pool (``error``) or drop
    and report invalid examples (``skip``); ``dedup``: drop exact and near duplicates compared
    on ``prompt``, ``response`` or ``both`` (None: off), near from a Jaccard similarity of
    ``dedup_threshold`` (see :mod:`smalltolarge.dedup`); ``assistant_turns``: in a multi-turn
    chat, the loss (of scoring and of training) covers every assistant turn (``all``: what
    LLaMA-Factory, axolotl and TRL's ``assistant_only_loss`` train on by default, so the
    trajectory measures what the target will learn) or the last one only (``last``); the two
    are one for a pool without multi-turn chats.
    """

    proxy: str = "tiny"
    template: str = "alpaca"
    max_length: int = DEFAULT_MAX_LENGTH
    prompt_column: str | None = None
    input_column: str | None = None
    response_column: str | None = None
    source_column: str | None = None
    id_column: str | None = None
    split: str = "train"
    on_invalid: str = "error"
    dedup: str | None = None
    dedup_threshold: float = DEFAULT_DEDUP_THRESHOLD
    assistant_turns: str = "all"

    def __post_init__(self) -> None:
        check_name("proxy", self.proxy)
        check_choice("template", self.template, TEMPLATES)
        check_max_length(self.max_length)
        for key in ("prompt_column", "input_column", "response_column", "source_column"):
            check_name(key, getattr(self, key), optional=True)
        check_name("id_column", self.id_column, optional=True)
        check_name("split", self.split)
        check_choice("on_invalid", self.on_invalid, ON_INVALID)
        check_choice("dedup", self.dedup, DEDUP_ON, optional=True)
        check_in_range("dedup_threshold", self.dedup_threshold, 0, 1, closed="(]")
        check_choice("assistant_turns", self.assistant_turns, ASSISTANT_TURNS)


def _check_training(s: Any) -> None:
    """The checks proxy training and target fine-tuning share (None for ``learning_rate`` or
    ``batch_size`` means the stage's default)."""
    check_positive("epochs", s.epochs)
    check_positive("learning_rate", s.learning_rate, optional=True)
    check_positive_int("batch_size", s.batch_size, optional=True)
    check_positive_int("grad_accum", s.grad_accum)
    check_in_range("warmup_ratio", s.warmup_ratio, 0.0, 1.0, closed="[)")
    check_non_negative_int("seed", s.seed)
    check_precision("precision", s.precision)


@dataclass(frozen=True)
class ProxySettings(StageSettings):
    """Training the proxy and recording its trajectories (``s2l train-proxy``).

    ``learning_rate`` / ``batch_size`` None: a preset's own (1e-3, 16), or the reference's
    (2e-5, 128) for a pretrained proxy. ``n_checkpoints`` evenly spaced checkpoints, or one
    every ``checkpoint_every`` steps. ``score_precision``: the precision of the trajectory
    scoring (None: the training's). ``max_tokens``: real tokens per scoring batch. A
    ``checkpoint_every`` given wins over ``n_checkpoints`` (which becomes None).
    """

    epochs: float = 3.0
    learning_rate: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    n_checkpoints: int | None = 12
    checkpoint_every: int | None = None
    seed: int = 0
    precision: str = "auto"
    score_precision: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        _check_training(self)
        check_positive_int("checkpoints", self.n_checkpoints, optional=True)
        check_positive_int("checkpoint_every", self.checkpoint_every, optional=True)
        if self.checkpoint_every is not None:  # an interval, when given, wins
            object.__setattr__(self, "n_checkpoints", None)
        elif self.n_checkpoints is None:
            raise S2LError("give the number of checkpoints or checkpoint_every")
        check_precision("score_precision", self.score_precision, optional=True)
        check_positive_int("max_tokens", self.max_tokens)


@dataclass(frozen=True)
class ScoreSettings(StageSettings):
    """Scoring saved proxy checkpoints (``s2l score``): precision, real tokens per batch, and
    tokens per resumable (checkpoint, chunk) unit."""

    precision: str = "auto"
    max_tokens: int = DEFAULT_MAX_TOKENS
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS

    def __post_init__(self) -> None:
        check_precision("precision", self.precision)
        check_positive_int("max_tokens", self.max_tokens)
        check_positive_int("chunk_tokens", self.chunk_tokens)


@dataclass(frozen=True)
class SelectSettings(StageSettings):
    """Selecting a subset (``s2l select``): the method, the budget (a fraction, a count or a
    percentage), the seed, S2L's number of clusters (None: the method's default) and the
    column to select within (None: the whole pool at once). ``target_set``: a file of
    examples of the task that matters, whose trajectories move S2L's quotas toward their
    clusters by ``target_weight`` in [0, 1] (0: plain S2L, 1: fully target-weighted; see
    :mod:`smalltolarge.selection.targeted`)."""

    method: str = "s2l"
    budget: float | int | str = 0.3
    seed: int = 0
    n_clusters: int | None = None
    stratify_by: str | None = None
    target_set: str | None = None
    target_weight: float = DEFAULT_TARGET_WEIGHT

    def __post_init__(self) -> None:
        check_name("method", self.method)
        check_name("target_set", self.target_set, optional=True)
        check_in_range("target_weight", self.target_weight, 0.0, 1.0, closed="[]")
        if self.target_set is None and self.target_weight != DEFAULT_TARGET_WEIGHT:
            raise S2LError(
                f"target_weight {self.target_weight} means nothing without target_set: it "
                "weighs a target set's pull on S2L's cluster quotas"
            )
        parse_budget(self.budget)
        check_non_negative_int("seed", self.seed)
        check_positive_int("n_clusters", self.n_clusters, optional=True)
        check_name("stratify_by", self.stratify_by, optional=True)


@dataclass(frozen=True)
class FinetuneSettings(StageSettings):
    """Fine-tuning the target on a subset (``s2l finetune``): the reference recipe (3 epochs,
    lr 2e-5, warm-up 3%, cosine), full fine-tuning or LoRA."""

    template: str = "alpaca"
    max_length: int = DEFAULT_MAX_LENGTH
    epochs: float = 3.0
    learning_rate: float = 2e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | str | None = None
    precision: str = "auto"
    seed: int = 0
    save_steps: int | None = None

    def __post_init__(self) -> None:
        check_choice("template", self.template, TEMPLATES)
        check_max_length(self.max_length)
        _check_training(self)
        check_positive("learning_rate", self.learning_rate)
        check_positive_int("batch_size", self.batch_size)
        check_bool("lora", self.lora)
        check_positive_int("lora_r", self.lora_r)
        check_positive("lora_alpha", self.lora_alpha)
        check_in_range("lora_dropout", self.lora_dropout, 0.0, 1.0, closed="[)")
        targets = self.lora_target_modules
        if targets is not None and targets != "all-linear":
            # any other single string is a regular expression to peft, not a module name
            if (
                isinstance(targets, str)
                or not targets
                or not all(isinstance(t, str) and t for t in targets)
            ):
                raise S2LError(
                    "lora_target_modules must be a non-empty list of module names or "
                    f"'all-linear', not {targets!r}"
                )
            object.__setattr__(self, "lora_target_modules", tuple(targets))
        check_positive_int("save_steps", self.save_steps, optional=True)


@dataclass(frozen=True)
class ProbeSettings(StageSettings):
    """Probing the target before fine-tuning (``s2l probe RUN --target MODEL``): the untrained
    target's response loss on ``fraction`` of every source of the pool (at most
    ``max_examples`` in all; seeded by ``seed``), formatted as the target will be fine-tuned
    (``template``, ``max_length``), in ``precision`` with ``max_tokens`` real tokens per
    batch."""

    fraction: float = 0.25
    max_examples: int = 5000
    seed: int = 0
    template: str = "alpaca"
    max_length: int = DEFAULT_MAX_LENGTH
    precision: str = "auto"
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        check_in_range("fraction", self.fraction, 0.0, 1.0, closed="(]")
        check_positive_int("max_examples", self.max_examples)
        check_non_negative_int("seed", self.seed)
        check_choice("template", self.template, TEMPLATES)
        check_max_length(self.max_length)
        check_precision("precision", self.precision)
        check_positive_int("max_tokens", self.max_tokens)


#: Evaluation metrics (see :mod:`smalltolarge.evaluate`); ``auto`` picks by the eval set.
METRICS = ("auto", "exact_match", "rouge_l", "loss")


@dataclass(frozen=True)
class EvalSettings(StageSettings):
    """Evaluating a model (``s2l evaluate``): greedy generation of at most ``max_new_tokens``
    for a generation metric, one forward pass of at most ``max_length`` tokens per example
    (``max_tokens`` real tokens per batch) for ``loss``; ``max_examples`` None: all."""

    template: str = "alpaca"
    metric: str = "auto"
    max_new_tokens: int = 256
    batch_size: int = 16
    precision: str = "auto"
    max_examples: int | None = None
    answer_column: str | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        check_choice("template", self.template, TEMPLATES)
        check_choice("metric", self.metric, METRICS)
        check_positive_int("max_tokens", self.max_tokens)
        check_positive_int("max_new_tokens", self.max_new_tokens)
        check_positive_int("batch_size", self.batch_size)
        check_precision("precision", self.precision)
        check_positive_int("max_examples", self.max_examples, optional=True)
        check_name("answer_column", self.answer_column, optional=True)
        check_max_length(self.max_length)


STAGES: dict[str, type[StageSettings]] = {
    "prepare": PrepareSettings,
    "proxy": ProxySettings,
    "score": ScoreSettings,
    "select": SelectSettings,
    "probe": ProbeSettings,
    "finetune": FinetuneSettings,
    "evaluate": EvalSettings,
}
