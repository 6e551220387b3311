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

Scorers of reasoning-gym (``reasoning_gym.get_score_answer_fn``) are deliberately not used: they
give partial credit (0.5, 0.1, 0.01 for a wrong answer in some tasks), which is not an
exact-match proportion, and several need the generator's ``metadata`` that eval files do not
carry, so one checker for every source is both simpler and comparable across sources.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smalltolarge.data import Pool, load_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import TEMPLATES, format_prompt
from smalltolarge.models import (
    autocast_dtype,
    check_tokenizer,
    default_device,
    load_causal_lm,
    load_tokenizer,
    resolve_precision,
)
from smalltolarge.runs import atomic_write_json, atomic_write_text

METRICS = ("auto", "exact_match", "rouge_l", "loss")

#: z for a two-sided 95% interval.
Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

#: A reference on one line with at most this many characters and words (runs of letters
#: outside LaTeX commands) counts as a short answer: "42", "3/4", "2 × 2 × 11", "Tuesday".
SHORT_ANSWER_CHARS = 40
SHORT_ANSWER_WORDS = 3

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
    template: str = "alpaca",
    metric: str = "auto",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    precision: str = "auto",
    max_examples: int | None = None,
    device: str | None = None,
    answer_column: str | None = None,
    max_length: int | None = None,
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
        max_length: ``loss`` only: tokens per example, as in fine-tuning (default 512).
        progress: show a progress bar over examples.

    Returns:
        The :class:`EvalResult`; the files it names hold every prediction and the full scores.

    Raises:
        S2LError: unknown metric or template, an unreadable eval set (including one without a
            response or answer column), a reference answer that cannot be found for exact
            match, or a model/tokenizer that cannot be loaded.
    """
    start = time.perf_counter()
    if metric not in METRICS:
        raise S2LError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if metric == "loss":
        from smalltolarge.heldout import DEFAULT_MAX_LENGTH, heldout_loss  # heldout imports us

        return heldout_loss(
            model,
            eval_data,
            out_dir,
            template=template,
            max_length=max_length or DEFAULT_MAX_LENGTH,
            precision=precision,
            max_examples=max_examples,
            device=device,
            progress=progress,
            **load_kwargs,
        )
    if template not in TEMPLATES:
        raise S2LError(f"unknown template '{template}'; choose one of {', '.join(TEMPLATES)}")
    if max_examples is not None and max_examples < 1:
        raise S2LError(f"max_examples must be positive, not {max_examples}")
    _check_generation_settings(max_new_tokens, batch_size)

    # The eval set is read before the model, so a bad file fails in a second, not after a load.
    pool = load_pool(eval_data, **load_kwargs)
    examples = _eval_examples(pool, answer_column, load_kwargs.get("split", "train"))
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
        format_prompt(i, x, m, template=template, tokenizer=tokenizer)
        for i, x, m in zip(examples.instructions, examples.inputs, examples.messages, strict=True)
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
                "ci": _ci_description(metric),
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


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    add_special_tokens: bool = True,
    progress: bool = False,
) -> list[str]:
    """Greedy completions of ``prompts``, in input order.

    Prompts are sorted by token length (longest first, ties in input order) and cut into
    batches of ``batch_size``, left-padded so that every row's last prompt token sits at the
    same position, and decoded with the KV cache (``model.generate(do_sample=False,
    use_cache=True)``). A row stops at the tokenizer's end-of-sequence token (or any end token
    of the model's generation config) or after ``max_new_tokens`` new tokens. Only the new
    tokens are decoded, without special tokens. The result is deterministic for fixed inputs
    and settings; in fp32 it matches generating each prompt alone.

    Args:
        model: a causal LM; moved to ``device`` when one is given, else used where it is.
        tokenizer: its tokenizer; left unchanged (padding is done here, not by the tokenizer).
        prompts: the formatted prompt texts, length ``n``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto``; half precisions run under autocast.
        add_special_tokens: whether tokenising a prompt adds the tokenizer's special tokens
            (True for the Alpaca template, False for a rendered chat template).

    Returns:
        ``n`` strings, the completion of each prompt.
    """
    _check_generation_settings(max_new_tokens, batch_size)
    if not prompts:
        return []
    if device is not None:
        model = model.to(device)
    run_device = next(model.parameters()).device
    dtype = autocast_dtype(resolve_precision(precision, run_device))
    check_tokenizer(tokenizer, getattr(tokenizer, "name_or_path", "the model"))
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    lengths = np.array([len(ids) for ids in encoded])
    if lengths.min() == 0:
        raise S2LError(f"prompt {int(np.argmin(lengths))} is empty after tokenisation")
    # Longest first, so that a batch too large for memory fails at once, not at the end.
    order = np.argsort(-lengths, kind="stable")
    outputs: list[str] = [""] * len(prompts)
    autocast = (
        torch.autocast(device_type=run_device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generating", unit="ex", disable=None if progress else True)
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = _left_pad([encoded[r] for r in rows], pad_id)
                generated = model.generate(
                    input_ids=input_ids.to(run_device),
                    attention_mask=attention_mask.to(run_device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    pad_token_id=pad_id,
                    eos_token_id=eos_ids,
                )
                new_tokens = generated[:, input_ids.shape[1] :].tolist()
                for r, ids in zip(rows, new_tokens, strict=True):
                    outputs[r] = tokenizer.decode(
                        _until_eos(ids, eos_ids),
                        skip_special_tokens=True,
                        clean_up_tokenization_spaces=False,
                    )
                bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return outputs


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
        extracted = [_prediction_answer(p) for p in predictions]
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


def choose_metric(references: Sequence[str]) -> str:
    """The metric ``auto`` resolves to for these references.

    ``exact_match`` when at least half of the references look like short answers: they contain
    ``####`` (GSM8K), ``\\boxed{`` or "the answer is" (any case), or they are a single line of
    at most :data:`SHORT_ANSWER_CHARS` characters and :data:`SHORT_ANSWER_WORDS` words
    (``"42"``, ``"3/4"``, ``"\\frac{1}{2}"``, ``"Tuesday"``); otherwise ``rouge_l``.
    """
    short = sum(_looks_like_short_answer(r) for r in references)
    return "exact_match" if references and 2 * short >= len(references) else "rouge_l"


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None when it states none.

    Tried in order, the first that applies wins:

    1. the rest of the line after the last ``####`` (GSM8K style);
    2. the content of the last ``\\boxed{...}`` (balanced braces, so ``\\boxed{\\frac{1}{2}}``
       gives ``\\frac{1}{2}``);
    3. the rest of the line after the last "The answer is" (any case, optional colon);
    4. the last number: optional sign, thousands commas, decimals, or a fraction ``a/b``.

    The answer is stripped of whitespace and a final period, and thousands commas are removed
    from a plain number (``"1,234"`` -> ``"1234"``).
    """
    for finder in (_after_hashes, _last_boxed, _after_answer_is, _last_number):
        found = finder(text)
        if found is not None:
            cleaned = _clean(found)
            if cleaned:
                return cleaned
    return None


def answers_match(predicted: str | None, reference: str) -> bool:
    """Whether a predicted final answer equals the reference final answer.

    1. Both are normalised (surrounding ``$``, ``\\text{}``, ``\\dfrac``, a final period,
       thousands commas, whitespace and case) and compared as strings; equal means correct.
    2. A reference in words (two or more letters in a row outside LaTeX commands, like
       ``"Tuesday"``) is judged by step 1 alone. When the reference is mathematical but the
       prediction has words (``"12 apples"``), its last number stands for it.
    3. With ``math-verify`` installed, ``verify(parse(reference), parse(prediction))`` decides:
       it knows LaTeX, fractions, percentages, sets and symbolic equivalence
       (``"0.5"`` == ``"\\frac{1}{2}"``). It compares *values*, so a form the task asks for
       is not checked: ``"6/34"`` matches ``"3/17"`` and ``"44"`` matches ``"2 × 2 × 11"``.
    4. Without it, a simpler fallback: both must read as plain numbers (integers, decimals,
       ``a/b``, ``\\frac{a}{b}``) equal within a relative tolerance of 1e-6.
    """
    if predicted is None or not predicted.strip():
        return False
    pred_norm, ref_norm = _normalise(predicted), _normalise(reference)
    if pred_norm == ref_norm:
        return True
    if _has_words(ref_norm):
        return False
    if _has_words(pred_norm):
        number = _last_number(predicted)
        if number is None:
            return False
        predicted, pred_norm = number, _normalise(number)
        if pred_norm == ref_norm:
            return True
    mv = _math_verify()
    if mv is not None:
        parse, verify = mv
        # math-verify times out through signal.alarm, which only works in the main thread.
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(_as_latex(reference), parsing_timeout=timeout)
        target = parse(_as_latex(predicted), parsing_timeout=timeout)
        return bool(gold and target and verify(gold, target, timeout_seconds=timeout))
    a, b = _as_number(pred_norm), _as_number(ref_norm)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` in [0, 1] (``rouge-score``, no
    stemming). Its tokenizer keeps lowercase ASCII letters and digits only, so text in other
    scripts scores 0."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def summarise(values: Sequence[float], metric: str) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high", "n"}`` of per-example scores, with a 95% CI: Wilson
    for exact match (values 0/1), percentile bootstrap for anything else."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    if metric == "exact_match":
        low, high = wilson_interval(int(array.sum()), n)
    else:
        low, high = bootstrap_interval(array)
    return {"mean": float(array.mean()), "ci_low": low, "ci_high": high, "n": n}


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% for the default z).

    Unlike the normal approximation it stays within [0, 1] and is not degenerate at 0 or n
    successes, which matters for small per-source counts.
    """
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves rounding noise there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (shape ``(n,)``), deterministic
    for a given seed."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, len(array), size=(resamples, len(array)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


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


def _eval_examples(pool: Pool, answer_column: str | None, split: str) -> _EvalExamples:
    columns = pool.dataset.with_format("arrow")[:].to_pydict()
    answers: list[str | None] = [None] * len(pool)
    name = answer_column
    if name is None and pool.schema.get("response") != "answer":
        name = "answer"
    if name is not None:
        values = _raw_column(pool, name, split, required=answer_column is not None)
        if values is None:
            name = None
        else:
            answers = [_answer_text(values[row]) for row in columns["row"]]
    return _EvalExamples(
        ids=columns["id"],
        sources=columns["source"],
        instructions=columns["instruction"],
        inputs=columns["input"],
        messages=columns["messages"],
        responses=columns["response"],
        answers=answers,
        answer_column=name,
    )


def _raw_column(pool: Pool, name: str, split: str, *, required: bool) -> list | None:
    """Column ``name`` of the eval input, one value per input record, or None if absent.

    The normalised pool keeps only the prompt/response columns, so the answer column is read
    from the input again with data.py's reader: the same reader means the same record
    numbering as the pool's ``row`` column, whatever the format.
    """
    from smalltolarge.data import _read_raw  # no public accessor for extra columns yet

    raw = _read_raw(pool.source_path, pool.schema.get("split") or split)
    if name not in raw.columns:
        if required:
            raise S2LError(
                f"{raw.label}: no column {name!r} (from answer_column); "
                f"columns: {', '.join(raw.columns)}"
            )
        return None
    return raw.column(name)


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
        reference = answer if answer is not None else _prediction_answer(response)
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


# --------------------------------------------------------------------------------------------
# Answer extraction and comparison
# --------------------------------------------------------------------------------------------

_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
# A sign counts only where it cannot be a binary minus ("5-3" ends in 3, "x = -3" in -3).
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])[-+−])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_PLAIN_FRACTION = re.compile(r"([-+]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}")


def _after_hashes(text: str) -> str | None:
    matches = _HASHES.findall(text)
    return matches[-1] if matches else None


def _after_answer_is(text: str) -> str | None:
    matches = _ANSWER_IS.findall(text)
    return matches[-1] if matches else None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: the answer was cut off


def _last_number(text: str) -> str | None:
    numbers = [m.group(0) for m in _NUMBER.finditer(text) if m.group(0)]
    return numbers[-1].replace("−", "-") if numbers else None


def _clean(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    number = _THOUSANDS.sub("", answer)
    if _PLAIN_NUMBER.fullmatch(number):
        return number
    # "#### $18" or "The answer is £5": the currency is not part of the value.
    if number[:1] in "$£€" and _PLAIN_NUMBER.fullmatch(number[1:].strip()):
        return number[1:].strip()
    return answer


def _prediction_answer(text: str) -> str | None:
    """:func:`extract_answer`, else the whole text when it is short (:func:`choose_metric`'s
    rule): a bare ``"Tuesday"`` states its answer without any of the patterns."""
    found = extract_answer(text)
    if found is not None:
        return found
    return _clean(text) if _is_short(text) else None


def _looks_like_short_answer(reference: str) -> bool:
    text = reference.strip()
    lowered = text.lower()
    if "####" in text or "\\boxed{" in text or "the answer is" in lowered:
        return True
    return _is_short(text)


def _is_short(text: str) -> bool:
    """One line of at most SHORT_ANSWER_CHARS characters and SHORT_ANSWER_WORDS words."""
    text = text.strip()
    if not text or "\n" in text or len(text) > SHORT_ANSWER_CHARS:
        return False
    return len(re.findall(r"[^\W\d_]+", _LATEX_COMMAND.sub(" ", text))) <= SHORT_ANSWER_WORDS


def _normalise(answer: str) -> str:
    """A canonical string form for comparing answers (see :func:`answers_match`)."""
    s = answer.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = _TEXT_COMMAND.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("{,}", ",").replace("−", "-")
    s = _THOUSANDS.sub("", s)
    s = s.rstrip(".").strip()
    return " ".join(s.split()).casefold()


def _has_words(normalised: str) -> bool:
    return re.search(r"[a-z]{2,}", _LATEX_COMMAND.sub(" ", normalised)) is not None


def _as_number(normalised: str) -> float | None:
    """The value of a plain number, ``a/b`` or ``\\frac{a}{b}``; None for anything else."""
    s = normalised.replace(" ", "")
    try:
        if _PLAIN_NUMBER.fullmatch(s):
            return float(Fraction(s))
        if m := _PLAIN_FRACTION.fullmatch(s):
            return float(Fraction(int(m.group(1)), int(m.group(2))))
        if m := _LATEX_FRACTION.fullmatch(s):
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return float(-value if m.group(1) == "-" else value)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _as_latex(answer: str) -> str:
    """An extracted answer as math-verify input: in ``$...$``, Unicode operators as LaTeX.

    Without delimiters math-verify looks for a number in the text and takes a fragment
    (``"2 × 2 × 11"`` parses as 11, which would then "equal" ``"3 × 11"``).
    """
    s = answer.strip().replace("×", "\\times ").replace("·", "\\cdot ").replace("⋅", "\\cdot ")
    s = s.replace("÷", "\\div ").replace("−", "-")
    if "$" in s or s.startswith(("\\(", "\\[")):
        return s
    return f"${s}$"


@functools.cache
def _math_verify() -> tuple[Any, Any] | None:
    """``(parse, verify)`` of math-verify, or None when it is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return parse, verify


def _checker_description(metric: str) -> str:
    if metric == "rouge_l":
        return "rouge-score ROUGE-L F1 (no stemming)"
    if _math_verify() is None:
        return "normalised string / number equality (math-verify not installed)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"math-verify {version('math-verify')}"
    except PackageNotFoundError:
        return "math-verify"


def _ci_description(metric: str) -> str:
    if metric == "exact_match":
        return "95% Wilson score interval"
    return f"95% percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})"


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
# Generation helpers
# --------------------------------------------------------------------------------------------


def _check_generation_settings(max_new_tokens: int, batch_size: int) -> None:
    if max_new_tokens < 1:
        raise S2LError(f"max_new_tokens must be positive, not {max_new_tokens}")
    if batch_size < 1:
        raise S2LError(f"batch_size must be positive, not {batch_size}")


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's end token first, then any other end token of the generation config
    (chat models often end a turn with a token the base tokenizer does not call eos)."""
    ids = [int(tokenizer.eos_token_id)]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for token in extra if isinstance(extra, (list, tuple)) else [extra]:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    return ids


def _left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, int64 of shape (batch, longest), padded on the
    left so that generation continues every row from the same position."""
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, longest - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[row, longest - len(seq) :] = 1
    return input_ids, attention_mask


def _until_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    # Finished rows are padded to the batch's length; everything from the first end token on
    # is not part of the answer, whatever the pad token is.
    for k, token in enumerate(ids):
        if token in eos_ids:
            return ids[:k]
    return ids
