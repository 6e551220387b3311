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
from smalltolarge.settings import (
    FinetuneSettings,
    PrepareSettings,
    ProxySettings,
    SelectSettings,
)


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
    #: "proxy training" / "target fine-tuning" -> the :class:`BatchPlan` of its peak memory
    memory: dict[str, BatchPlan] = field(default_factory=dict)


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
    batch_size: int | None = ProxySettings.batch_size,
    target_batch_size: int = FinetuneSettings.batch_size,
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
        batch_size, target_batch_size: the per-device batches of proxy training (default: the
            preset's, or 128 for a pretrained proxy) and of fine-tuning, whose peak memory
            (:func:`training_memory`, at the longest example, AdamW, ``auto`` precision) is
            set against this machine's free memory (:func:`plan_batch`).

    Raises:
        S2LError: an unreadable pool or model, or settings that price nothing.
    """
    from smalltolarge.data import load_pool
    from smalltolarge.formatting import tokenise_pool
    from smalltolarge.models import (
        PRESETS,
        REFERENCE_BATCH_SIZE,
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
    if batch_size is None:
        preset = PRESETS.get(proxy)
        batch_size = preset.batch_size if preset else REFERENCE_BATCH_SIZE
    lengths = proxy_tokenised.lengths
    memory = {
        name: plan
        for name, plan in (
            ("proxy training", _memory_plan(proxy, proxy_tok, batch_size, lengths, notes)),
            (
                "target fine-tuning",
                _memory_plan(
                    target,
                    target_tok,
                    target_batch_size,
                    lengths if target_tokenised is None else target_tokenised.lengths,
                    notes,
                ),
            ),
        )
        if plan is not None
    }

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
        memory=memory,
    )


def _memory_plan(model: str, tokenizer, batch_size: int, lengths, notes: list[str]):
    """The :class:`BatchPlan` of training ``model`` on this machine's default device, or None
    (with a note) when even one example would not fit."""
    from smalltolarge.models import default_device, resolve_precision

    device = default_device()
    try:
        return plan_batch(
            empty_model(model, tokenizer=tokenizer),
            batch_size=batch_size,
            grad_accum=1,
            longest=int(np.max(lengths)),
            precision=resolve_precision("auto", device),
            device=device,
        )
    except S2LError as e:
        notes.append(f"{model}: {e}")
        return None


def compute_parameters(model: str, *, tokenizer=None) -> int:
    """Parameters of ``model`` that do arithmetic per token, from its config alone.

    ``model`` is a preset (sized for ``tokenizer``) or a HF name/path/short name; the model is
    built on the meta device (``accelerate.init_empty_weights``), so no weights are read or
    allocated. The input embedding is left out (a lookup, no FLOPs); the output projection
    counts, tied to it or not.
    """
    built = empty_model(model, tokenizer=tokenizer)
    # Counted by role, not by identity: on the meta device tied weights may be two tensors.
    embedding = built.get_input_embeddings().weight
    head = built.get_output_embeddings().weight
    body = sum(p.numel() for p in built.parameters() if p is not embedding and p is not head)
    return int(body + head.numel())


def empty_model(model: str, *, tokenizer=None):
    """``model`` (a preset sized for ``tokenizer``, or a HF name/path/short name) built from
    its config on the meta device: every tensor's shape and dtype, no memory."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from smalltolarge.models import build_preset_model, is_preset, resolve_model

    with init_empty_weights():
        if is_preset(model):
            if tokenizer is None:
                raise S2LError(f"the '{model}' preset is sized by its tokenizer; pass one")
            return build_preset_model(model, tokenizer, seed=0)
        try:
            config = AutoConfig.from_pretrained(resolve_model(model))
        except (OSError, ValueError) as e:
            raise S2LError(f"could not read the config of '{model}': {first_line(e)}") from e
        return AutoModelForCausalLM.from_config(config)


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
    for name, plan in est.memory.items():
        lines.append(f"{name} {plan.message()}")
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---- memory of training ---------------------------------------------------------------------

#: Bytes kept for the backward pass per token and layer, per unit of width, by precision:
#: (per hidden unit H, per MLP unit I, per attention head and key position). Measured on a
#: CPU with the tensors torch allocates in one training step (Llama and GPT-2, widths 64-256,
#: lengths 64-256, sdpa and eager attention, fp32 and bf16 autocast; the largest of each), as
#: `tests/test_memory.py` checks: fp32 keeps ~11 hidden-sized and ~5 MLP-sized fp32 tensors a
#: layer, autocast ~10 hidden-sized (norms stay fp32) and ~1.5 MLP-sized; attention that
#: keeps its (heads x length x length) scores costs up to ~8 bytes per head and key.
ACTIVATION_BYTES = {"fp32": (44, 21, 8), "amp": (40, 6, 8)}
#: Bytes per logit alive at once in the loss and its gradient: the logits, their fp32 copy, the
#: log-softmax kept for the backward pass and two gradients (plus a low-precision copy of each
#: under autocast).
LOGIT_BYTES = {"fp32": 16, "amp": 20}
#: The share of the free memory an estimate may take: the allocator's slack, the libraries and
#: the scoring done while training need the rest.
MEMORY_HEADROOM = 0.85


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated peak memory of one training process, in bytes, by part, for micro-batches
    of ``batch_size`` examples of ``longest`` tokens: the weights (and their low-precision
    copies under autocast), their gradients, AdamW's two moments, the activations kept for the
    backward pass and the logits alive at once in the loss."""

    batch_size: int
    longest: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "logits")
        named = ", ".join(f"{p} {_gb(getattr(self, p))}" for p in parts)
        return f"~{_gb(self.total)} ({named})"


def training_memory(
    model: Any,
    *,
    batch_size: int,
    longest: int,
    precision: str,
    device: Any = "cpu",
    chunked: bool | None = None,
) -> TrainingMemory:
    """The peak memory of training ``model`` (built, on any device, ``meta`` too; a peft model
    counts only its adapters as trained) with AdamW on micro-batches of ``batch_size`` x
    ``longest`` tokens in ``precision`` (fp32, bf16, fp16) on ``device``.

    ``chunked`` (default: whether :func:`~smalltolarge.losses.supports_chunked_loss`) says
    whether the loss runs through :func:`~smalltolarge.losses.chunked_lm_loss`, whose logits
    are at most a chunk's (every labelled position's when they fit in one chunk), or through
    the model's own full (batch x length x vocabulary) logits. Every position is counted as
    labelled. The formula and its constants (:data:`ACTIVATION_BYTES`, :data:`LOGIT_BYTES`) are
    this one place; training (:func:`plan_batch`) and ``s2l estimate`` use it.
    """
    import torch

    from smalltolarge.losses import logit_budget, logit_chunk_rows, supports_chunked_loss

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    mlp = int(mlp or 4 * hidden)
    head = lm.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else int(config.vocab_size)
    if chunked is None:
        chunked = supports_chunked_loss(lm)
    amp = precision in ("bf16", "fp16")
    kind = "amp" if amp else "fp32"

    unique = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in unique)
    trained = sum(p.numel() * p.element_size() for p in unique if p.requires_grad)
    if amp:  # autocast's low-precision copies of the weights, kept for the backward pass
        weights += 2 * sum(p.numel() for p in unique if p.is_floating_point())
    tokens = batch_size * longest
    per_h, per_i, per_key = ACTIVATION_BYTES[kind]
    # the embeddings, the final norm and the hidden states gathered for the loss: one layer more
    activations = tokens * (layers + 1) * (per_h * hidden + per_i * mlp + per_key * heads * longest)
    device = torch.device(device)
    if chunked:
        rows = (
            tokens
            if tokens * vocab <= logit_budget(device)
            else logit_chunk_rows(device, vocab, None)
        )
        logits = LOGIT_BYTES[kind] * vocab * min(rows, tokens)
    else:
        logits = LOGIT_BYTES[kind] * vocab * tokens
    return TrainingMemory(
        batch_size=batch_size,
        longest=longest,
        weights=int(weights),
        gradients=int(trained),
        optimizer=int(2 * trained),
        activations=int(activations),
        logits=int(logits),
    )


def available_memory(device: Any) -> int | None:
    """Bytes free for training on ``device``, or None when unknown: a GPU's free memory
    (``torch.cuda.mem_get_info``); on a CPU the kernel's available memory (``MemAvailable``),
    or less when the process's control group is limited (what is left of its limit)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    known = [m for m in (_meminfo_available(), _cgroup_left()) if m is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _cgroup_left() -> int | None:
    """The process's control-group memory limit less its usage (cgroup v2, then v1)."""
    from pathlib import Path

    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                candidates.append(Path("/sys/fs/cgroup") / line[3:].lstrip("/"))
    except OSError:
        pass
    candidates.append(Path("/sys/fs/cgroup"))
    for base in candidates:
        try:
            limit = (base / "memory.max").read_text().strip()
            used = (base / "memory.current").read_text().strip()
        except OSError:
            continue
        return None if limit == "max" else max(0, int(limit) - int(used))
    v1 = Path("/sys/fs/cgroup/memory")
    try:
        limit = int((v1 / "memory.limit_in_bytes").read_text())
        used = int((v1 / "memory.usage_in_bytes").read_text())
    except (OSError, ValueError):
        return None
    return None if limit >= 1 << 60 else max(0, limit - used)


@dataclass(frozen=True)
class BatchPlan:
    """The per-device batch and gradient accumulation a training runs with: the asked-for
    ones, or a smaller batch with proportionally more accumulation (the same effective batch)
    where the asked-for one would not fit ``available`` bytes. ``asked`` and ``chosen`` are
    the estimates at both; ``available`` is None when the device's memory is unknown."""

    batch_size: int
    grad_accum: int
    asked: TrainingMemory
    chosen: TrainingMemory
    available: int | None
    device: str

    @property
    def split(self) -> bool:
        return self.chosen.batch_size != self.asked.batch_size

    def message(self) -> str:
        """One line: what was estimated, and how the batch was split to fit."""
        where = f"{self.device} has {_gb(self.available)} free" if self.available else ""
        asked = self.asked.batch_size
        if not self.split:
            return f"memory: batch {asked} needs {self.asked.describe()}; {where}"
        effective = self.batch_size * self.grad_accum
        return (
            f"memory: batch {asked} would need {self.asked.describe()} but {where}: training "
            f"with batch {self.batch_size} x {self.grad_accum} accumulation steps instead "
            f"(~{_gb(self.chosen.total)}; the same effective batch of {effective})"
        )

    def record(self) -> dict[str, Any]:
        """The plan as JSON-ready metadata."""
        return {
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "estimated_bytes": self.chosen.total,
            "estimated_bytes_asked": self.asked.total,
            "available_bytes": self.available,
            "split": self.split,
        }


def plan_batch(
    model: Any,
    *,
    batch_size: int,
    grad_accum: int,
    longest: int,
    precision: str,
    device: Any,
    chunked: bool | None = None,
    available: int | None = None,
) -> BatchPlan:
    """Keep ``batch_size`` where its :func:`training_memory` fits :data:`MEMORY_HEADROOM` of
    the device's free memory (``available``, default :func:`available_memory`; the weights
    already on the device count as free), else the largest divisor of ``batch_size`` that
    fits, with ``grad_accum`` multiplied by the same factor.

    Raises:
        S2LError: even a batch of one example would not fit; the message gives the numbers.
    """
    import torch

    device = torch.device(device)
    if available is None:
        available = available_memory(device)

    def estimate_at(b: int) -> TrainingMemory:
        return training_memory(
            model, batch_size=b, longest=longest, precision=precision, device=device,
            chunked=chunked,
        )  # fmt: skip

    asked = estimate_at(batch_size)
    plan = BatchPlan(batch_size, grad_accum, asked, asked, available, str(device))
    if available is None:
        return plan
    unique = {id(p): p for p in model.parameters()}.values()
    resident = sum(p.numel() * p.element_size() for p in unique if p.device == device)
    room = MEMORY_HEADROOM * (available + resident)
    if asked.total <= room:
        return plan
    for b in sorted((d for d in range(1, batch_size) if batch_size % d == 0), reverse=True):
        chosen = estimate_at(b)
        if chosen.total <= room:
            return BatchPlan(
                b, grad_accum * (batch_size // b), asked, chosen, available, str(device)
            )
    one = estimate_at(1)
    raise S2LError(
        f"training needs {one.describe()} even with one example of {longest} tokens per "
        f"batch, but {device} has {_gb(available)} free (of which {MEMORY_HEADROOM:.0%} is "
        "used for training); free memory, use a shorter --max-length or a smaller model"
    )


def _gb(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1e9:.2f} GB" if n < 1e11 else f"{n / 1e9:.0f} GB"
