"""Held-out loss: the target model's mean response negative log-likelihood on an eval set.

Exact match on a few hundred items moves in steps of a few points; the held-out loss of the
same items is far less noisy and costs one forward pass. It is computed exactly as fine-tuning
sees the data: :func:`~smalltolarge.formatting.tokenise_pool` builds ``prompt + response +
eos`` with the training template and the response mask, and the batched loss kernel of
scoring (:func:`~smalltolarge.losses.score_model`, length batches, right padding masked) gives
each example's mean loss over its response tokens (the end-of-sequence token included), in
nats per token. Examples whose prompt fills ``max_length`` get no loss and are listed as
excluded; responses cut at ``max_length`` count over their kept tokens, as in training.

Summaries, each with a 95% percentile bootstrap interval (1000 resamples, seed 0):

- ``overall``: the mean of the per-example losses;
- ``per_source``: the mean of the per-example losses of each source;
- ``macro``: the mean over sources of the per-source means (so a source with many items does
  not dominate); its interval resamples items within each source.

Results go to ``out_dir/losses.jsonl`` (one line per example: ``id``, ``source``, ``loss``,
``n_tokens``) and ``out_dir/loss.json`` (summaries and settings); the names differ from
generation's ``predictions.jsonl`` and ``scores.json``, so both can share one directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smalltolarge.data import load_pool
from smalltolarge.evaluate import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, EvalResult
from smalltolarge.formatting import TokenArrays, tokenise_pool
from smalltolarge.losses import score_model
from smalltolarge.models import (
    autocast_dtype,
    check_tokenizer,
    default_device,
    load_causal_lm,
    load_tokenizer,
    pad_token_id,
    resolve_precision,
)
from smalltolarge.runs import atomic_write_json, atomic_write_text, fingerprint
from smalltolarge.settings import EvalSettings

LOSSES_FILE = "losses.jsonl"
LOSS_SCORES_FILE = "loss.json"


@dataclass
class LossResult(EvalResult):
    """:class:`~smalltolarge.evaluate.EvalResult` of the ``loss`` metric (nats per response
    token; lower is better). ``predictions_path`` is ``losses.jsonl``, ``scores_path``
    ``loss.json``; ``macro`` is ``{"mean", "ci_low", "ci_high", "n"}`` over sources (``n``:
    the number of sources); ``excluded`` lists ``{"id", "reason"}`` of examples without a
    loss (prompt longer than ``max_length``)."""

    macro: dict[str, float] = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)


def heldout_loss(
    model: str | os.PathLike,
    eval_data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    template: str = EvalSettings.template,
    max_length: int = EvalSettings.max_length,
    max_tokens: int = EvalSettings.max_tokens,
    precision: str = EvalSettings.precision,
    max_examples: int | None = EvalSettings.max_examples,
    device: str | None = None,
    progress: bool = True,
    **load_kwargs: Any,
) -> LossResult:
    """Mean response loss of ``model`` on every eval example, written per example and summed up.

    Args:
        model: a fine-tuned model directory or a model name; its tokenizer is loaded from the
            same place.
        eval_data: the eval set, any format :func:`~smalltolarge.data.load_pool` reads
            (``load_kwargs`` are passed to it).
        out_dir: directory for ``losses.jsonl`` and ``loss.json`` (created if needed).
        template: the prompt template used in training, ``alpaca`` or ``chat``.
        max_length: tokens per example, as in fine-tuning (longer responses are cut).
        max_tokens: tokens per forward batch (batch size x longest example).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        max_examples: use only the first ``max_examples`` examples in file order.
        device: ``cuda``, ``cpu``, ...; default: CUDA when available.
        progress: print a one-line summary when done.

    Returns:
        The :class:`LossResult` (means in nats per response token).

    Raises:
        S2LError: unknown template, bad sizes, an unreadable eval set, no example fitting
            ``max_length``, or a model/tokenizer that cannot be loaded.
    """
    start = time.perf_counter()
    EvalSettings(
        template=template,
        metric="loss",
        max_length=max_length,
        max_tokens=max_tokens,
        precision=precision,
        max_examples=max_examples,
    )

    pool = load_pool(eval_data, **load_kwargs)
    n_in_file = len(pool)
    if max_examples is not None and max_examples < len(pool):
        # A new fingerprint too: tokenising caches by it, and the head is not the whole set.
        pool = dataclasses.replace(
            pool,
            dataset=pool.dataset.select(range(max_examples)),
            fingerprint=fingerprint(pool.fingerprint, "head", max_examples),
        )
    tokenizer = load_tokenizer(model)
    check_tokenizer(tokenizer, str(model))
    tokenised = tokenise_pool(pool, tokenizer, template=template, max_length=max_length)

    device = device or default_device()
    resolved = resolve_precision(precision, device)
    lm = load_causal_lm(model, dtype=autocast_dtype(resolved) or torch.float32).to(device)
    arrays = TokenArrays.from_dataset(tokenised.dataset)
    pad_id = pad_token_id(tokenizer)
    losses = score_model(
        lm, arrays, precision=resolved, device=device, pad_id=pad_id, max_tokens=max_tokens
    ).astype(np.float64)
    del lm

    all_sources = pool.sources()
    # an empty label is reported as evaluate's per-source scores report it
    sources = [all_sources[int(k)] or "(none)" for k in tokenised.dataset["pool_index"]]
    summary = summarise_losses(losses, sources if pool.has_sources else None)
    out = Path(out_dir)
    result = LossResult(
        metric="loss",
        overall=summary["overall"],
        per_source=summary["per_source"],
        predictions_path=out / LOSSES_FILE,
        scores_path=out / LOSS_SCORES_FILE,
        macro=summary["macro"],
        excluded=tokenised.excluded,
    )
    rows = zip(tokenised.dataset["id"], sources, losses, tokenised.response_lengths, strict=True)
    atomic_write_text(
        result.predictions_path,
        "".join(
            json.dumps({"id": i, "source": s, "loss": float(x), "n_tokens": int(n)}) + "\n"
            for i, s, x, n in rows
        ),
    )
    atomic_write_json(
        result.scores_path,
        {
            "metric": "loss",
            "unit": "nats per response token (mean per example)",
            **summary,
            "model": str(model),
            "eval_data": str(eval_data),
            "settings": {
                "template": template,
                "max_length": max_length,
                "max_tokens": max_tokens,
                "precision": resolved,
                "device": str(device),
                "max_examples": max_examples,
                "n_examples": len(losses),
                "n_in_file": n_in_file,
                "n_truncated": tokenised.n_truncated,
                "n_excluded": len(tokenised.excluded),
                "excluded": tokenised.excluded,
                "ci": f"95% percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, "
                f"seed {BOOTSTRAP_SEED}); macro: resampled within each source",
                "load_kwargs": load_kwargs,
            },
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    if progress:
        o = result.overall
        print(
            f"held-out loss: {o['mean']:.4f} nats/token [{o['ci_low']:.4f}, {o['ci_high']:.4f}] "
            f"on {len(losses)} items ({len(tokenised.excluded)} excluded: prompt too long)"
        )
    return result


def summarise_losses(
    losses: Sequence[float] | np.ndarray,
    sources: Sequence[str] | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Overall, per-source and macro means of per-example losses, each with a 95% bootstrap CI.

    Args:
        losses: per-example mean losses (nats per token), shape ``(n,)``.
        sources: the source label of each example (length ``n``); None for no per-source
            figures (then ``macro`` equals ``overall``).

    Returns:
        ``{"overall": s, "per_source": {source: s}, "macro": s}`` with each ``s`` a dict
        ``{"mean", "ci_low", "ci_high", "n"}``; ``n`` counts examples, or sources for macro.
    """
    values = np.asarray(losses, dtype=np.float64)
    rng = np.random.default_rng(seed)
    overall = _summary(values, _resampled_means(values, resamples, rng))
    if sources is None:
        return {"overall": overall, "per_source": {}, "macro": {**overall, "n": 1}}
    labels = np.asarray(sources)
    per_source, source_draws = {}, []
    for source in sorted(set(sources)):
        part = values[labels == source]
        draws = _resampled_means(part, resamples, rng)
        per_source[source] = _summary(part, draws)
        source_draws.append(draws)
    # Resampling inside each source keeps every source in every resample, as the macro mean
    # weighs each source once whatever its size.
    macro_draws = np.mean(source_draws, axis=0)
    means = [s["mean"] for s in per_source.values()]
    low, high = np.quantile(macro_draws, [0.025, 0.975])
    macro = {"mean": float(np.mean(means)), "ci_low": float(low), "ci_high": float(high)}
    return {"overall": overall, "per_source": per_source, "macro": {**macro, "n": len(means)}}


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of ``values``: float64, shape (resamples,)."""
    if len(values) == 0:
        return np.full(resamples, math.nan)
    counts = rng.multinomial(len(values), np.full(len(values), 1 / len(values)), size=resamples)
    return counts @ values / len(values)


def _summary(values: np.ndarray, draws: np.ndarray) -> dict[str, float]:
    low, high = np.quantile(draws, [0.025, 0.975])
    return {
        "mean": float(values.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": len(values),
    }
