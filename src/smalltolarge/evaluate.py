"""Evaluate a (fine-tuned) causal LM on a held-out set: greedy generation, then a metric.

The target model of S2L is fine-tuned on the selected subset and then judged here. Prompts are
built with the same template as training (:func:`~smalltolarge.formatting.format_prompt`), the
eval set is read by :func:`~smalltolarge.data.load_pool` (any format and schema the pool
accepts), and generation is greedy, batched with left padding and deterministic.

Two metrics:

- ``exact_match`` (math and other short-answer tasks): the final answer is read from the
  prediction (:func:`extract_answer`) and compared with the reference answer
  (:func:`answers_match`). The reference is the eval set's ``answer`` column when it has one
  (the bundled eval set does), else the answer extracted from the response.
- ``rouge_l`` (free text): ROUGE-L F1 between prediction and response (``rouge-score``).

``metric="auto"`` picks ``exact_match`` when at least half of the references look like short
answers (see :func:`choose_metric`), else ``rouge_l``. ``metric="loss"`` generates nothing: it
is the held-out response loss of :mod:`smalltolarge.heldout` (one forward pass).

Every score comes with a 95% confidence interval, overall and per source: the Wilson score
interval for exact-match proportions, a percentile bootstrap (1000 resamples, seed 0) for the
mean ROUGE-L. Results go to ``out_dir/predictions.jsonl`` (one line per example) and
``out_dir/scores.json``, both written atomically.

The parts live in their own modules: generation in :mod:`smalltolarge.generation`, answer
extraction and comparison in :mod:`smalltolarge.answers`, the intervals in
:mod:`smalltolarge.intervals`. This module reads the eval set, puts them together and writes
the results; their public names stay importable from here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smalltolarge.answers import (
    SHORT_ANSWER_CHARS,
    SHORT_ANSWER_WORDS,
    answers_match,
    checker_description,
    choose_metric,
    extract_answer,
    prediction_answer,
)
from smalltolarge.data import Pool, load_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import format_prompt
from smalltolarge.generation import generate
from smalltolarge.intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Z_95,
    bootstrap_interval,
    interval_description,
    summarise,
    wilson_interval,
)
from smalltolarge.models import (
    autocast_dtype,
    check_tokenizer,
    default_device,
    load_causal_lm,
    load_tokenizer,
    resolve_precision,
)
from smalltolarge.runs import atomic_write_json, atomic_write_text, output_dir
from smalltolarge.settings import METRICS, EvalSettings

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "METRICS",
    "PREDICTIONS_FILE",
    "SCORES_FILE",
    "SHORT_ANSWER_CHARS",
    "SHORT_ANSWER_WORDS",
    "Z_95",
    "EvalResult",
    "Scores",
    "answers_match",
    "bootstrap_interval",
    "choose_metric",
    "evaluate",
    "extract_answer",
    "generate",
    "rouge_l",
    "score_predictions",
    "summarise",
    "wilson_interval",
]


PREDICTIONS_FILE = "predictions.jsonl"
SCORES_FILE = "scores.json"


@dataclass
class EvalResult:
    """What :func:`evaluate` measured and where it wrote it.

    ``overall`` is ``{"mean", "ci_low", "ci_high", "n"}`` (mean accuracy in [0, 1] for
    exact match, mean ROUGE-L F1 in [0, 1] for rouge_l; the CI is 95%); ``per_source`` maps each
    source label to the same kind of dict (empty when the eval set has no sources).
    """

    metric: str
    overall: dict[str, float]
    per_source: dict[str, dict[str, float]]
    predictions_path: Path
    scores_path: Path


@dataclass
class Scores:
    """Per-example scores and their summaries, as returned by :func:`score_predictions`.

    ``values``: one score per example, in input order (1.0/0.0 for exact match, ROUGE-L F1 in
    [0, 1]); ``extracted``: the answer read from each prediction (exact match; None when none
    was found, and always None for rouge_l); ``overall``/``per_source``: as in
    :class:`EvalResult`.
    """

    metric: str
    values: list[float]
    extracted: list[str | None]
    overall: dict[str, float]
    per_source: dict[str, dict[str, float]] = field(default_factory=dict)


def evaluate(
    model: str | os.PathLike,
    eval_data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    template: str = EvalSettings.template,
    metric: str = EvalSettings.metric,
    max_new_tokens: int = EvalSettings.max_new_tokens,
    batch_size: int = EvalSettings.batch_size,
    precision: str = EvalSettings.precision,
    max_examples: int | None = EvalSettings.max_examples,
    device: str | None = None,
    answer_column: str | None = EvalSettings.answer_column,
    max_length: int = EvalSettings.max_length,
    progress: bool = True,
    **load_kwargs: Any,
) -> EvalResult:
    """Generate an answer for every eval example with ``model`` and score it.

    Args:
        model: a fine-tuned model directory or a model name (anything
            :func:`~smalltolarge.models.load_causal_lm` accepts); its tokenizer is loaded from
            the same place.
        eval_data: the eval set, in any format :func:`~smalltolarge.data.load_pool` reads;
            ``load_kwargs`` (``prompt_column``, ``response_column``, ``source_column``,
            ``id_column``, ``split``, ``on_invalid``, ...) are passed to it.
        out_dir: directory for ``predictions.jsonl`` and ``scores.json`` (created if needed).
        template: the prompt template used in training, ``alpaca`` or ``chat``.
        metric: ``exact_match``, ``rouge_l``, ``auto`` (see :func:`choose_metric`) or
            ``loss`` (:func:`~smalltolarge.heldout.heldout_loss`: no generation; returns its
            :class:`~smalltolarge.heldout.LossResult`).
        max_new_tokens: generation budget per example, in tokens.
        batch_size: prompts per generation batch.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``; the weights are loaded in that
            dtype and run under autocast.
        max_examples: evaluate only the first ``max_examples`` examples in file order.
        device: ``cuda``, ``cpu``, ...; default: CUDA when available.
        answer_column: the column holding the reference final answer for exact match; by
            default ``answer`` when the eval set has such a column and it is not already the
            response column. Rows where it is empty fall back to the response.
        max_length: ``loss`` only: tokens per example, as in fine-tuning.
        progress: show a progress bar over examples.

    Returns:
        The :class:`EvalResult`; the files it names hold every prediction and the full scores.

    Raises:
        S2LError: unknown metric or template, an unreadable eval set (including one without a
            response or answer column), a reference answer that cannot be found for exact
            match, or a model/tokenizer that cannot be loaded.
    """
    start = time.perf_counter()
    EvalSettings(  # every setting checked once, here
        template=template,
        metric=metric,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        precision=precision,
        max_examples=max_examples,
        answer_column=answer_column,
        max_length=max_length,
    )
    output_dir(out_dir)
    if metric == "loss":
        from smalltolarge.heldout import heldout_loss  # heldout imports us

        return heldout_loss(
            model,
            eval_data,
            out_dir,
            template=template,
            max_length=max_length,
            precision=precision,
            max_examples=max_examples,
            device=device,
            progress=progress,
            **load_kwargs,
        )

    # The eval set is read before the model, so a bad file fails in a second, not after a load.
    pool = load_pool(eval_data, extra_columns=[answer_column or "answer"], **load_kwargs)
    examples = _eval_examples(pool, answer_column)
    n_in_file = len(examples.ids)
    if max_examples is not None:
        examples = examples.head(max_examples)
    if metric == "auto":
        metric = choose_metric(examples.answer_candidates())
    references = _references(examples, metric)

    device = device or default_device()
    resolved = resolve_precision(precision, device)
    tokenizer = load_tokenizer(model)
    check_tokenizer(tokenizer, str(model))
    prompts = [
        format_prompt(i, x, m, template=template, tokenizer=tokenizer, system=s)
        for i, x, m, s in zip(
            examples.instructions, examples.inputs, examples.messages, examples.systems, strict=True
        )
    ]
    lm = load_causal_lm(model, dtype=autocast_dtype(resolved) or torch.float32).to(device)
    gen_start = time.perf_counter()
    predictions = generate(
        lm,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        precision=resolved,
        device=device,
        # Same rule as training (formatting.tokenise_pool): a chat template already has BOS.
        add_special_tokens=template != "chat",
        progress=progress,
    )
    gen_seconds = time.perf_counter() - gen_start
    del lm

    sources = examples.sources if pool.has_sources else None
    scores = score_predictions(predictions, references, metric=metric, sources=sources)

    out = Path(out_dir)
    predictions_path = out / PREDICTIONS_FILE
    scores_path = out / SCORES_FILE
    lines = []
    for k in range(len(predictions)):
        correct = bool(scores.values[k] == 1.0) if metric == "exact_match" else None
        row = {
            "id": examples.ids[k],
            "source": examples.sources[k],
            "prompt": prompts[k],
            "prediction": predictions[k],
            "extracted": scores.extracted[k],
            "reference": references[k],
            "correct": correct,
            "score": scores.values[k],
        }
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(predictions_path, "".join(lines))
    atomic_write_json(
        scores_path,
        {
            "metric": metric,
            "overall": scores.overall,
            "per_source": scores.per_source,
            "model": str(model),
            "eval_data": str(eval_data),
            "settings": {
                "template": template,
                "max_new_tokens": max_new_tokens,
                "batch_size": batch_size,
                "precision": resolved,
                "device": str(device),
                "max_examples": max_examples,
                "n_examples": len(predictions),
                "n_in_file": n_in_file,
                "n_skipped_invalid": len(pool.skipped),
                "reference": examples.reference_description(metric),
                "checker": _checker_description(metric),
                "ci": interval_description(metric),
                "load_kwargs": load_kwargs,
            },
            "generation_seconds": round(gen_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    return EvalResult(
        metric=metric,
        overall=scores.overall,
        per_source=scores.per_source,
        predictions_path=predictions_path,
        scores_path=scores_path,
    )


def score_predictions(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    metric: str,
    sources: Sequence[str] | None = None,
) -> Scores:
    """Score predictions against references, overall and per source.

    Args:
        predictions: the generated texts, length ``n``.
        references: for ``exact_match`` the reference final answers (``"42"``, ``"3/4"``,
            ``"Tuesday"``), used as they are; for ``rouge_l`` the reference texts. Length ``n``.
        metric: ``exact_match``, ``rouge_l`` or ``auto`` (:func:`choose_metric` on references).
        sources: the source label of each example (length ``n``); None for no per-source
            statistics. An empty label is reported as ``"(none)"``.

    Returns:
        :class:`Scores` with 95% CIs: Wilson for exact match, percentile bootstrap for ROUGE-L.
    """
    if len(predictions) != len(references):
        raise S2LError(f"{len(predictions)} predictions but {len(references)} references")
    if sources is not None and len(sources) != len(predictions):
        raise S2LError(f"{len(predictions)} predictions but {len(sources)} source labels")
    if not predictions:
        raise S2LError("nothing to score: no predictions")
    if metric == "auto":
        metric = choose_metric(references)
    if metric == "exact_match":
        extracted = [prediction_answer(p) for p in predictions]
        values = [float(answers_match(e, r)) for e, r in zip(extracted, references, strict=True)]
    elif metric == "rouge_l":
        scorer = _rouge_scorer()
        extracted = [None] * len(predictions)
        values = [
            float(scorer.score(r, p)["rougeL"].fmeasure)
            for p, r in zip(predictions, references, strict=True)
        ]
    else:
        generation = ", ".join(m for m in METRICS if m != "loss")
        raise S2LError(f"unknown metric '{metric}' for predictions; choose one of {generation}")
    per_source: dict[str, dict[str, float]] = {}
    if sources is not None:
        groups: dict[str, list[float]] = {}
        for label, value in zip(sources, values, strict=True):
            groups.setdefault(label or "(none)", []).append(value)
        per_source = {label: summarise(groups[label], metric) for label in sorted(groups)}
    return Scores(
        metric=metric,
        values=values,
        extracted=extracted,
        overall=summarise(values, metric),
        per_source=per_source,
    )


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` in [0, 1] (``rouge-score``, no
    stemming). Its tokenizer keeps lowercase ASCII letters and digits only, so text in other
    scripts scores 0."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@functools.cache
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise S2LError(
            "metric 'rouge_l' needs the rouge-score package: pip install rouge-score"
        ) from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


# --------------------------------------------------------------------------------------------
# The eval set and its references
# --------------------------------------------------------------------------------------------


@dataclass
class _EvalExamples:
    """The columns of the eval set that evaluation needs, in file order (all length n)."""

    ids: list[str]
    sources: list[str]
    instructions: list[str]
    inputs: list[str]
    messages: list[str]
    systems: list[str]
    responses: list[str]
    answers: list[str | None]  # from the answer column; None where there is none
    answer_column: str | None

    def head(self, k: int) -> _EvalExamples:
        return _EvalExamples(
            ids=self.ids[:k],
            sources=self.sources[:k],
            instructions=self.instructions[:k],
            inputs=self.inputs[:k],
            messages=self.messages[:k],
            systems=self.systems[:k],
            responses=self.responses[:k],
            answers=self.answers[:k],
            answer_column=self.answer_column,
        )

    def answer_candidates(self) -> list[str]:
        """What exact match would compare against: the answer, else the whole response."""
        return [
            a if a is not None else r for a, r in zip(self.answers, self.responses, strict=True)
        ]

    def reference_description(self, metric: str) -> str:
        if metric == "rouge_l":
            return "the response"
        if self.answer_column is None:
            return "the answer extracted from the response"
        return f"column '{self.answer_column}', else the answer extracted from the response"


def _eval_examples(pool: Pool, answer_column: str | None) -> _EvalExamples:
    """The eval set's columns; ``pool`` was loaded with the answer column in its ``extra``."""
    columns = pool.dataset.with_format("arrow")[:].to_pydict()
    answers: list[str | None] = [None] * len(pool)
    name = answer_column
    if name is None and pool.schema.get("response") != "answer":
        name = "answer"
    if name is not None and name not in pool.extra:
        if answer_column is not None:
            split = pool.schema.get("split")
            label = f"{pool.source_path}[{split}]" if split else pool.source_path
            raise S2LError(
                f"{label}: no column {name!r} (from answer_column); "
                f"columns: {', '.join(pool.input_columns)}"
            )
        name = None
    if name is not None:
        answers = [_answer_text(value) for value in pool.extra[name]]
    return _EvalExamples(
        ids=columns["id"],
        sources=columns["source"],
        instructions=columns["instruction"],
        inputs=columns["input"],
        messages=columns["messages"],
        systems=columns["system"],
        responses=columns["response"],
        answers=answers,
        answer_column=name,
    )


def _answer_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None  # missing, null, NaN or a structure: no usable answer in this row


def _references(examples: _EvalExamples, metric: str) -> list[str]:
    """The reference of each example for ``metric``; S2LError when exact match has none."""
    if metric == "rouge_l":
        return list(examples.responses)
    references: list[str] = []
    missing: list[str] = []
    for ex_id, answer, response in zip(
        examples.ids, examples.answers, examples.responses, strict=True
    ):
        reference = answer if answer is not None else prediction_answer(response)
        if reference is None:
            missing.append(ex_id)
            reference = ""
        references.append(reference)
    if missing:
        raise S2LError(
            f"exact_match needs a final answer per example, but {len(missing)} of "
            f"{len(references)} responses state none (first: id={missing[0]}); add an answer "
            "column (answer_column=) or use metric='rouge_l'"
        )
    return references


def _checker_description(metric: str) -> str:
    if metric == "rouge_l":
        return "rouge-score ROUGE-L F1 (no stemming)"
    return checker_description()
