"""What selection will cost and what it saves, before anything is trained.

``estimate(POOL, proxy=P, target=M)`` counts the pool's tokens with the proxy's tokenizer (for
a preset proxy, the BPE that ``s2l prepare`` would train on this pool) and with the target's,
counts both models' parameters from their configs (no weights are loaded), and prices each
stage in FLOPs with the usual dense-transformer rule of thumb (Kaplan et al., 2020):

- proxy training: ``6 * N_proxy * D_proxy * epochs`` (forward + backward);
- scoring: ``2 * N_proxy * D_proxy * T`` (one forward pass over the pool per checkpoint);
- target fine-tuning: ``6 * N_target * D_target * target_epochs``, on the full pool and on each
  budget's subset (``D`` scaled by the budget's share of the examples: S2L's subsets keep the
  pool's mean length to within a few percent, see ``mean_response_tokens`` in a summary).

``N`` counts the parameters that do arithmetic per token: all of them but the input embedding
(a lookup); the output projection counts, tied to it or not. Attention's ``O(length^2)`` term
is left out; at the lengths of SFT data (a few hundred tokens) it is a few percent. ``D``
counts every token of the formatted example (prompt + response, truncated at ``max_length``),
since the forward pass reads them all.

Wall time divides FLOPs by a throughput: either stated (``tokens_per_second``: proxy training
tokens per second per device, turned into FLOP/s with ``6 * N_proxy`` and assumed for scoring
too; optionally ``target_tokens_per_second`` for the target), or measured by a short probe that
trains the proxy on a few real batches of this pool on this machine and runs a few scoring
batches (forward passes are priced at their own measured rate: large no-grad batches run at a
different utilisation than small training steps), and a few training steps of the target
(built from its config with random weights). Without a measured or stated target rate, the
proxy's training FLOP/s are assumed for the target: a large target runs at a far higher
utilisation than a tiny proxy, so its wall time is then an upper bound (about 55x too long for
SmolLM2-135M against the tiny proxy on a CPU; see the README).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.readers import first_line
from smalltolarge.settings import PrepareSettings, ProxySettings, SelectSettings


@dataclass
class Stage:
    """One priced stage: tokens processed (all passes), FLOPs and estimated seconds."""

    name: str
    tokens: int
    flops: float
    seconds: float


@dataclass
class Estimate:
    """The estimate of a selection and of fine-tuning on its subsets vs the full pool.

    ``stages`` lists proxy training, scoring, and target fine-tuning on the full pool and at
    each budget; ``selection_flops``/``selection_seconds`` sum the first two; ``savings`` has
    one row per budget (the budget in examples, the FLOPs and seconds saved by fine-tuning on
    the subset instead of the full pool after paying for the selection).
    """

    n_examples: int
    proxy_tokens: int
    target_tokens: int
    proxy_parameters: int
    target_parameters: int
    flops_per_second: float
    scoring_flops_per_second: float
    throughput_source: str
    stages: list[Stage]
    selection_flops: float
    selection_seconds: float
    savings: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def estimate(
    pool: str | os.PathLike,
    *,
    proxy: str = "tiny",
    target: str,
    gpus: int = 1,
    checkpoints: int = ProxySettings.n_checkpoints,
    epochs: float = ProxySettings.epochs,
    target_epochs: float | None = None,
    budgets: tuple[float | int | str, ...] = (SelectSettings.budget,),
    max_length: int = PrepareSettings.max_length,
    template: str = PrepareSettings.template,
    tokens_per_second: float | None = None,
    target_tokens_per_second: float | None = None,
    probe_steps: int = 4,
) -> Estimate:
    """Estimate the compute and wall time of S2L on ``pool`` and what its subsets save.

    Args:
        pool: anything :func:`~smalltolarge.data.load_pool` reads.
        proxy: a preset (tiny, small) or a HF causal LM name or path.
        target: the model to be fine-tuned: a HF name or path, or a short name.
        gpus: devices working in parallel (data parallel, perfect scaling assumed).
        checkpoints: T, the number of checkpoints scored.
        epochs: proxy training epochs; ``target_epochs`` those of fine-tuning [default: same].
        budgets: subset sizes, each a fraction (0.3, "30%") or a count (3000).
        max_length: tokens per example, as in ``s2l prepare``.
        tokens_per_second: proxy training tokens/s per device; None measures a probe.
        target_tokens_per_second: target fine-tuning tokens/s per device [default: measured
            by the probe when ``tokens_per_second`` is too, else the proxy's FLOP/s].
        probe_steps: timed optimizer steps of the probe (after one warm-up step).

    Raises:
        S2LError: an unreadable pool or model, or settings that price nothing.
    """
    from smalltolarge.data import load_pool
    from smalltolarge.formatting import tokenise_pool
    from smalltolarge.models import (
        PRESETS,
        check_model_name,
        is_preset,
        load_tokenizer,
        train_pool_tokenizer,
    )
    from smalltolarge.selection import resolve_budget

    if gpus < 1 or checkpoints < 1 or not epochs > 0:
        raise S2LError("gpus and checkpoints must be positive integers and epochs positive")
    for model in (proxy, target):  # a missing one is refused now, not after the pool is read
        check_model_name(model)
    target_epochs = epochs if target_epochs is None else target_epochs
    the_pool = load_pool(pool)
    notes: list[str] = []

    if is_preset(proxy):
        proxy_tok = train_pool_tokenizer(the_pool, PRESETS[proxy].vocab_size, template=template)
    else:
        proxy_tok = load_tokenizer(proxy)
    proxy_tokenised = tokenise_pool(the_pool, proxy_tok, template=template, max_length=max_length)
    proxy_tokens = int(proxy_tokenised.lengths.sum())
    target_tok = target_tokenised = None
    try:
        target_tok = load_tokenizer(target)
        target_tokenised = tokenise_pool(
            the_pool, target_tok, template=template, max_length=max_length
        )
        target_tokens = int(target_tokenised.lengths.sum())
    except S2LError as e:
        target_tokens = proxy_tokens
        notes.append(f"target tokenizer unavailable ({e}); its token count is the proxy's")

    n_proxy = compute_parameters(proxy, tokenizer=proxy_tok)
    n_target = compute_parameters(target)

    if tokens_per_second is not None:
        if not tokens_per_second > 0:
            raise S2LError(f"tokens_per_second must be positive, not {tokens_per_second}")
        flops_per_second = 6.0 * n_proxy * tokens_per_second
        # forward passes at the same utilisation as training
        scoring_flops_per_second = flops_per_second
        source = f"stated: {tokens_per_second:,.0f} proxy training tokens/s per device"
    else:
        train_tps, score_tps = probe_throughput(
            proxy, proxy_tokenised, proxy_tok, steps=probe_steps
        )
        flops_per_second = 6.0 * n_proxy * train_tps
        scoring_flops_per_second = 2.0 * n_proxy * score_tps
        source = (
            f"measured on this machine: {train_tps:,.0f} proxy training tokens/s, "
            f"{score_tps:,.0f} scoring tokens/s"
        )
    total_rate = flops_per_second * gpus
    if target_tokens_per_second is None and tokens_per_second is None and target_tok is not None:
        # a large target runs at a far higher utilisation than a tiny proxy: measure it too
        target_tokens_per_second, _ = probe_throughput(
            target, target_tokenised, target_tok, steps=probe_steps, score=False
        )
        source += f", {target_tokens_per_second:,.0f} target training tokens/s"
    if target_tokens_per_second is not None:
        target_rate = 6.0 * n_target * target_tokens_per_second * gpus
    else:
        target_rate = total_rate
        notes.append("target wall time assumes the proxy's training FLOP/s")

    def stage(name: str, tokens: float, flops: float, rate: float) -> Stage:
        return Stage(name, int(round(tokens)), flops, flops / rate)

    stages = [
        stage(
            f"proxy training ({epochs:g} epochs)",
            proxy_tokens * epochs,
            6.0 * n_proxy * proxy_tokens * epochs,
            total_rate,
        ),
        stage(
            f"scoring ({checkpoints} checkpoints)",
            proxy_tokens * checkpoints,
            2.0 * n_proxy * proxy_tokens * checkpoints,
            scoring_flops_per_second * gpus,
        ),
    ]
    full = stage(
        f"target fine-tuning, full pool ({target_epochs:g} epochs)",
        target_tokens * target_epochs,
        6.0 * n_target * target_tokens * target_epochs,
        target_rate,
    )
    stages.append(full)
    selection_flops = stages[0].flops + stages[1].flops
    selection_seconds = stages[0].seconds + stages[1].seconds
    n = len(the_pool)
    savings = []
    for budget in budgets:
        count = resolve_budget(budget, n, n_selectable=len(proxy_tokenised))
        share = count / n
        sub = stage(
            f"target fine-tuning, {count} examples ({100 * share:.1f}%)",
            target_tokens * target_epochs * share,
            full.flops * share,
            target_rate,
        )
        stages.append(sub)
        savings.append(
            {
                "budget": budget,
                "n_examples": count,
                "flops_saved": full.flops - sub.flops - selection_flops,
                "seconds_saved": full.seconds - sub.seconds - selection_seconds,
                "cost_share": (sub.flops + selection_flops) / full.flops,
            }
        )
    return Estimate(
        n_examples=n,
        proxy_tokens=proxy_tokens,
        target_tokens=target_tokens,
        proxy_parameters=n_proxy,
        target_parameters=n_target,
        flops_per_second=flops_per_second,
        scoring_flops_per_second=scoring_flops_per_second,
        throughput_source=source,
        stages=stages,
        selection_flops=selection_flops,
        selection_seconds=selection_seconds,
        savings=savings,
        notes=notes,
    )


def compute_parameters(model: str, *, tokenizer=None) -> int:
    """Parameters of ``model`` that do arithmetic per token, from its config alone.

    ``model`` is a preset (sized for ``tokenizer``) or a HF name/path/short name; the model is
    built on the meta device (``accelerate.init_empty_weights``), so no weights are read or
    allocated. The input embedding is left out (a lookup, no FLOPs); the output projection
    counts, tied to it or not.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from smalltolarge.models import build_preset_model, is_preset, resolve_model

    with init_empty_weights():
        if is_preset(model):
            if tokenizer is None:
                raise S2LError(f"the '{model}' preset is sized by its tokenizer; pass one")
            built = build_preset_model(model, tokenizer, seed=0)
        else:
            try:
                config = AutoConfig.from_pretrained(resolve_model(model))
            except (OSError, ValueError) as e:
                raise S2LError(f"could not read the config of '{model}': {first_line(e)}") from e
            built = AutoModelForCausalLM.from_config(config)
    # Counted by role, not by identity: on the meta device tied weights may be two tensors.
    embedding = built.get_input_embeddings().weight
    head = built.get_output_embeddings().weight
    body = sum(p.numel() for p in built.parameters() if p is not embedding and p is not head)
    return int(body + head.numel())


def probe_throughput(
    model_name: str, tokenised, tokenizer, *, steps: int = 4, score: bool = True
) -> tuple[float, float]:
    """Throughput of ``model_name`` on this machine in real (unpadded) tokens per second:
    training (``steps`` AdamW steps on batches of the preset's size, or 8) and, with
    ``score``, scoring (``steps`` no-grad forward passes on length-grouped batches of 4,096
    tokens, as ``s2l score`` batches; else NaN); each after one untimed warm-up step. A HF
    model is built from its config with random weights: the speed does not depend on them."""
    import torch

    from smalltolarge.formatting import TokenArrays, length_batches
    from smalltolarge.models import (
        PRESETS,
        autocast_dtype,
        build_preset_model,
        default_device,
        is_preset,
        pad_token_id,
        resolve_model,
        resolve_precision,
    )

    device = default_device()
    dtype = autocast_dtype(resolve_precision("auto", device))
    if is_preset(model_name):
        model = build_preset_model(model_name, tokenizer, seed=0)
        batch_size = PRESETS[model_name].batch_size
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(resolve_model(model_name))
        model = AutoModelForCausalLM.from_config(config)
        batch_size = 8
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    arrays = TokenArrays.from_dataset(tokenised.dataset)
    pad = pad_token_id(tokenizer)
    order = np.random.default_rng(0).permutation(len(tokenised))
    train_batches = [
        np.take(order, range(k * batch_size, (k + 1) * batch_size), mode="wrap")
        for k in range(steps + 1)
    ]
    score_batches = length_batches(arrays.lengths, 4096)
    picks = np.random.default_rng(0).permutation(len(score_batches))[: steps + 1]
    score_batches = [score_batches[k] for k in picks]

    def timed(batches, step) -> float:
        tokens, seconds = 0, 0.0
        for k, rows in enumerate(batches):
            batch = {key: v.to(device) for key, v in arrays.batch(rows, pad_id=pad).items()}
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            step(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if k > 0:  # the first step pays for allocation and kernel selection
                seconds += time.perf_counter() - started
                tokens += int(batch["attention_mask"].sum())
        if not seconds > 0 or not math.isfinite(seconds):
            raise S2LError("the throughput probe measured no time")
        return tokens / seconds

    def train_step(batch):
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def score_step(batch):
        with (
            torch.no_grad(),
            torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None),
        ):
            model(**batch)

    model.train()
    train_tps = timed(train_batches, train_step)
    if not score:
        return train_tps, float("nan")
    model.eval()
    return train_tps, timed(score_batches, score_step)


def format_estimate(est: Estimate) -> str:
    """The estimate as plain text lines for a terminal or a log."""
    lines = [
        f"pool: {est.n_examples:,} examples; {est.proxy_tokens:,} tokens with the proxy's "
        f"tokenizer, {est.target_tokens:,} with the target's",
        f"parameters (per-token compute): proxy {est.proxy_parameters:,}, "
        f"target {est.target_parameters:,}",
        f"throughput: {est.throughput_source}; {est.flops_per_second:.3g} FLOP/s per device "
        f"training, {est.scoring_flops_per_second:.3g} scoring",
        "",
        f"{'stage':<58} {'tokens':>14} {'FLOPs':>10} {'time':>10}",
    ]
    for s in est.stages:
        lines.append(f"{s.name:<58} {s.tokens:>14,} {s.flops:>10.3g} {_duration(s.seconds):>10}")
    lines.append("")
    lines.append(
        f"selection costs {est.selection_flops:.3g} FLOPs, about {_duration(est.selection_seconds)}"
    )
    for s in est.savings:
        verb = "saves" if s["flops_saved"] > 0 else "costs an extra"
        lines.append(
            f"budget {s['budget']} ({s['n_examples']:,} examples): selection + fine-tuning on "
            f"the subset is {100 * s['cost_share']:.1f}% of fine-tuning on the full pool; "
            f"it {verb} {abs(s['flops_saved']):.3g} FLOPs, about "
            f"{_duration(abs(s['seconds_saved']))}"
        )
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
