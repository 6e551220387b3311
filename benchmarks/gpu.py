"""Scoring and proxy-training throughput on a GPU, against the device's bf16 peak.

One command, no network (models are built from configs, the data is the bundled pool)::

    python benchmarks/gpu.py --out gpu.jsonl          # a CUDA machine; sized for ~4-5 min
    python benchmarks/gpu.py --smoke --out smoke.jsonl   # any CPU, seconds: same JSON keys

What it builds:

- models: ``GPTNeoXForCausalLM`` from configs shaped like Pythia-70M (6 layers, hidden 512,
  8 heads, 50,304-token vocabulary, untied output projection) and Pythia-410M (24 layers,
  hidden 1024, 16 heads), random weights (throughput does not depend on them);
- tokenizer: a byte-level BPE of ``--bpe-vocab`` tokens (default 8,192) trained on the bundled
  pool with :func:`smalltolarge.models.train_bpe_tokenizer`; the models' vocabulary stays
  50,304 (Pythia pads its own 50,277-token tokenizer the same way), so the output projection
  costs what Pythia's does;
- data: the bundled demo pool in the Alpaca template (``tokenise_pool``, max_length 512),
  repeated to ``--examples`` (default 52,200 = 18 copies). Its examples are short (81 tokens on
  average, at most 274, with this tokenizer; MathInstruct's average about 290), so the rates
  are those of short examples; the ``env`` line reports the mean.

What it measures, each for a limited time (so the run fits in 8 minutes on one H200), in real
(non-pad) tokens per second, after a warm-up:

- ``scoring``, per shape and method: ``ref``, the reference method (one example at a time,
  fp32, ``model(ids, labels=...).loss`` as :func:`smalltolarge.losses.reference_loss`), on a
  random sample, for ``--ref-seconds``; ``ours``, :func:`smalltolarge.losses.score_model` in
  bf16 autocast over :func:`length_batches` of ``max_tokens`` tokens (each budget of
  ``--max-tokens``), batches taken in a seeded random order for ``--seconds``; ``forward``, a
  plain ``model(input_ids, attention_mask).logits`` in bf16 autocast over the very batches
  ``ours`` scored. ``ours`` also reports ``max_abs_diff`` against ``ref`` on the ref sample.
- ``training``, the 70M shape: AdamW, bf16 autocast, batches of ``--train-batch`` examples
  (S2L's reference batch of 128) in the proxy's length-grouped order,
  ``model(**batch).loss.backward()``, for ``--train-seconds``.
- ``projection``, the 70M shape, per scoring method: the wall time of MathInstruct-sized
  scoring (262k examples x 12 checkpoints, about 0.9e9 tokens) at the measured rate, and the
  issue's yardstick, the same FLOPs at 40% of the device's peak.

FLOPs (model FLOPs, as in MFU): a forward costs ``2 * matmul_params * tokens`` and a training
step ``6 * matmul_params * tokens``, where ``matmul_params`` is every parameter except the input
embedding table (a lookup, no multiply); the attention-score term (about 2% at these lengths) is
left out, and so is padding. ``ours`` is credited with a full forward's FLOPs although it skips
the output projection at prompt positions: the figure says how fast the scoring job is done, in
the units of the device's peak. ``fraction_of_peak`` divides by :data:`PEAK_BF16_TFLOPS` for the
device's name (dense bf16), or by ``--peak-tflops``; unknown device: null. ``peak_memory_gib``
is ``torch.cuda.max_memory_allocated`` during that measurement (null on a CPU).

Every result is one JSON object per line on stdout (and in ``--out``), with ``kind`` one of
``env``, ``scoring``, ``training``, ``projection``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

from smalltolarge.data import load_pool  # noqa: E402
from smalltolarge.demo_data import DEMO_POOL  # noqa: E402
from smalltolarge.formatting import TokenArrays, length_batches, tokenise_pool  # noqa: E402
from smalltolarge.losses import score_model  # noqa: E402
from smalltolarge.models import (  # noqa: E402
    REFERENCE_BATCH_SIZE,
    count_parameters,
    train_pool_tokenizer,
)
from smalltolarge.runs import fingerprint  # noqa: E402
from smalltolarge.training import EpochSeededLengthGroupedSampler  # noqa: E402


def _load_cpu_benchmark():
    """benchmarks/scoring.py (not a package), for the helpers both benchmarks share."""
    path = Path(__file__).with_name("scoring.py")
    spec = importlib.util.spec_from_file_location("s2l_benchmark_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cpu_benchmark = _load_cpu_benchmark()
subset, log = _cpu_benchmark.subset, _cpu_benchmark.log

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched
#: as substrings of ``torch.cuda.get_device_name()``, first match wins (so "H100 PCIe" comes
#: before "H100").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
)

#: Model shapes (GPTNeoX, as Pythia); "smoke-*" are tiny stand-ins for --smoke.
SHAPES: dict[str, dict] = {
    "pythia-70m": {"num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 8},
    "pythia-410m": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16},
    "smoke-a": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2},
    "smoke-b": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2},
}
PYTHIA_VOCAB = 50_304

#: MathInstruct-sized scoring (the issue's figures): examples x checkpoints, and tokens through
#: the proxy (about 286 tokens per example).
MATHINSTRUCT_EXAMPLES = 262_000
MATHINSTRUCT_CHECKPOINTS = 12
MATHINSTRUCT_TOKENS = 0.9e9
#: The issue's yardstick: MathInstruct-sized scoring at this fraction of the device's peak.
YARDSTICK_FRACTION = 0.4

#: Settings for a GPU run and for --smoke (a CPU, seconds); flags override either.
FULL = {
    "shapes": "pythia-70m,pythia-410m",
    "train_shape": "pythia-70m",
    "vocab": PYTHIA_VOCAB,
    "bpe_vocab": 8192,
    "pool_examples": None,
    "examples": 52_200,
    "max_tokens": "4096,32768",
    "seconds": 15.0,
    "ref_seconds": 15.0,
    "ref_max": 5000,
    "train_seconds": 30.0,
    "train_batch": REFERENCE_BATCH_SIZE,
    "warmup": 3,
}
SMOKE = {
    "shapes": "smoke-a,smoke-b",
    "train_shape": "smoke-a",
    "vocab": 512,
    "bpe_vocab": 320,
    "pool_examples": 60,
    "examples": 120,
    "max_tokens": "256,1024",
    "seconds": 0.01,
    "ref_seconds": 0.01,
    "ref_max": 4,
    "train_seconds": 0.01,
    "train_batch": 4,
    "warmup": 1,
}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the benchmark; print each result as a JSON line (and append it to ``--out``) and
    return the results as a list of dicts."""
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak = args.peak_tflops if args.peak_tflops else peak_tflops(device)
    results: list[dict] = []
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("", encoding="utf-8")

    def emit(record: dict) -> None:
        # line by line, so a run cut short keeps what it measured
        results.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    started = time.perf_counter()
    tok, arrays = build_data(args)
    pad_id = int(tok.pad_token_id)
    emit(
        {
            "kind": "env",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(device),
            "peak_bf16_tflops": peak,
            "smoke": args.smoke,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "tokenizer": f"byte-level BPE trained on the bundled pool, {len(tok)} tokens",
            "model_vocab": args.vocab,
            "examples": len(arrays.response_start),
            "tokens": int(arrays.lengths.sum()),
            "mean_tokens_per_example": round(float(arrays.lengths.mean()), 1),
            "setup_s": round(time.perf_counter() - started, 2),
        }
    )
    rng = np.random.default_rng(args.seed)
    for shape in args.shapes.split(","):
        model = build_model(shape, args.vocab, tok, device, args.seed)
        log(f"{shape}: {count_parameters(model) / 1e6:.1f}M parameters on {device}")
        scoring = bench_scoring(model, shape, arrays, pad_id, device, peak, args, rng)
        for record in scoring:
            emit(record)
        if shape == args.train_shape:
            emit(bench_training(model, shape, arrays, pad_id, device, peak, args))
            for record in scoring:
                emit(projection(record, peak))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(f"done in {time.perf_counter() - started:.0f} s")
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU, seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the table")
    parser.add_argument("--shapes", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--train-shape", help="the shape whose training is measured")
    parser.add_argument("--vocab", type=int, help="model vocabulary (default 50304)")
    parser.add_argument("--bpe-vocab", type=int, help="BPE tokens trained on the pool")
    parser.add_argument("--pool-examples", type=int, help="first N bundled examples (all)")
    parser.add_argument("--examples", type=int, help="pool repeated to this many examples")
    parser.add_argument("--max-tokens", help="comma list of scoring batch budgets (tokens)")
    parser.add_argument("--seconds", type=float, help="time for `ours` at each budget")
    parser.add_argument("--ref-seconds", type=float, help="time for the reference method")
    parser.add_argument("--ref-max", type=int, help="most examples for the reference method")
    parser.add_argument("--train-seconds", type=float, help="time for proxy training")
    parser.add_argument("--train-batch", type=int, help="training batch, examples")
    parser.add_argument("--warmup", type=int, help="untimed batches before each measurement")
    parser.add_argument("--max-length", type=int, default=512, help="tokenisation max_length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke and args.device is None:
        args.device = "cpu"
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    return args


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of ``device`` in TFLOP/s from :data:`PEAK_BF16_TFLOPS`, or None."""
    return peak_for_name(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def peak_for_name(name: str) -> float | None:
    """Dense bf16 peak in TFLOP/s of the GPU called ``name``, or None when not in the table."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build_data(args: argparse.Namespace):
    """``(tokenizer, arrays)``: the bundled pool tokenised, repeated to ``args.examples``."""
    pool = load_pool(DEMO_POOL)
    if args.pool_examples:
        n = min(args.pool_examples, len(pool))
        pool = dataclasses.replace(
            pool,
            dataset=pool.dataset.select(range(n)),
            fingerprint=fingerprint(pool.fingerprint, n),
        )
    tok = train_pool_tokenizer(pool, args.bpe_vocab)
    if len(tok) > args.vocab:
        raise SystemExit(f"the tokenizer has {len(tok)} tokens, more than --vocab {args.vocab}")
    tokenised = tokenise_pool(pool, tok, template="alpaca", max_length=args.max_length)
    once = TokenArrays.from_dataset(tokenised.dataset)
    n = len(once.response_start)
    return tok, subset(once, np.arange(max(args.examples, n)) % n)


def build_model(shape: str, vocab: int, tok, device: torch.device, seed: int):
    """A Pythia-shaped GPTNeoX of ``shape`` with ``vocab`` output tokens, fp32, on ``device``."""
    dims = SHAPES[shape]
    config = GPTNeoXConfig(
        vocab_size=vocab,
        intermediate_size=4 * dims["hidden_size"],
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **dims,
    )
    torch.manual_seed(seed)
    # Built on the device: initialising 400M parameters on the host takes longer than scoring.
    with device:
        model = GPTNeoXForCausalLM(config)
    return model.eval()


def matmul_params(model) -> int:
    """Parameters that take part in multiply-adds: all but the input embedding table."""
    return count_parameters(model) - model.get_input_embeddings().weight.numel()


def bench_scoring(model, shape, arrays, pad_id, device, peak, args, rng) -> list[dict]:
    """One ``scoring`` record per method: ref, then ours and forward at each budget."""
    flop_params = matmul_params(model)
    amp = {"device_type": device.type, "dtype": torch.bfloat16}
    n = len(arrays.response_start)
    ref_rows = np.sort(rng.choice(n, size=min(args.ref_max, n), replace=False))
    ref_arrays = subset(arrays, ref_rows)
    records = []

    def record(method: str, max_tokens, precision: str, tokens: int, seconds: float, mem, **extra):
        common = rate_fields(tokens, seconds, 2 * flop_params, peak)
        return {
            "kind": "scoring",
            "shape": shape,
            "method": method,
            "precision": precision,
            "max_tokens": max_tokens,
            "params": count_parameters(model),
            "matmul_params": flop_params,
            **common,
            "peak_memory_gib": mem,
            "flops": "2 * matmul_params * tokens",
            **extra,
        }

    # ref: one example at a time, fp32, timed for ref_seconds.
    def ref_one(i: int) -> float:
        return reference_loss_on(model, ref_arrays, i, device)

    ref_losses, count, seconds, mem = timed(
        ref_one, range(len(ref_rows)), args, device, seconds=args.ref_seconds
    )
    tokens = int(ref_arrays.lengths[:count].sum())
    records.append(record("ref", None, "fp32", tokens, seconds, mem, examples=count))
    ref_done = subset(ref_arrays, np.arange(count))
    log(f"  ref: {count} examples, {records[-1]['tok_s']:.0f} tok/s")

    for max_tokens in (int(m) for m in args.max_tokens.split(",")):
        batches = length_batches(arrays.lengths, max_tokens)
        batches = [batches[i] for i in rng.permutation(len(batches))]

        def ours(rows):
            return score_model(
                model, arrays, [rows], precision="bf16", device=device, pad_id=pad_id
            )

        def forward(rows):
            batch = arrays.batch(rows, pad_id)
            with torch.inference_mode(), torch.autocast(**amp):
                _ = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                ).logits

        _, count, seconds, mem = timed(ours, batches, args, device, seconds=args.seconds)
        done = batches[:count]
        tokens = int(sum(arrays.lengths[b].sum() for b in done))
        computed = sum(len(b) * int(arrays.lengths[b].max()) for b in done)
        # ours (bf16) against the reference (fp32) on the examples the reference scored
        ours_ref = score_model(
            model, ref_done, precision="bf16", device=device, pad_id=pad_id, max_tokens=max_tokens
        )
        diff = float(np.abs(ours_ref - np.asarray(ref_losses)).max())
        records.append(
            record(
                "ours",
                max_tokens,
                "bf16",
                tokens,
                seconds,
                mem,
                examples=int(sum(len(b) for b in done)),
                padding=round(1 - tokens / computed, 4),
                max_abs_diff=diff,
            )
        )
        _, _, seconds, mem = timed(forward, done, args, device)
        records.append(
            record(
                "forward",
                max_tokens,
                "bf16",
                tokens,
                seconds,
                mem,
                examples=records[-1]["examples"],
                padding=records[-1]["padding"],
            )
        )
        log(
            f"  max_tokens {max_tokens}: ours {records[-2]['tok_s']:.0f} tok/s, "
            f"forward {records[-1]['tok_s']:.0f} tok/s over {count} batches"
        )
    return records


def bench_training(model, shape, arrays, pad_id, device, peak, args) -> dict:
    """Proxy training throughput: AdamW, bf16 autocast, length-grouped batches."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    sampler = EpochSeededLengthGroupedSampler(args.train_batch, arrays.lengths.tolist(), args.seed)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    batches = [order[i : i + args.train_batch] for i in range(0, len(order), args.train_batch)]

    def step(rows):
        batch = {k: v.to(device) for k, v in arrays.batch(rows, pad_id).items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    losses, count, seconds, mem = timed(step, batches, args, device, seconds=args.train_seconds)
    model.eval()
    done = batches[:count]
    tokens = int(sum(arrays.lengths[b].sum() for b in done))
    computed = sum(len(b) * int(arrays.lengths[b].max()) for b in done)
    flop_params = matmul_params(model)
    log(f"  training: {count} steps, {tokens / seconds:.0f} tok/s")
    return {
        "kind": "training",
        "shape": shape,
        "precision": "bf16",
        "optimizer": "AdamW",
        "batch_examples": args.train_batch,
        "params": count_parameters(model),
        "matmul_params": flop_params,
        **rate_fields(tokens, seconds, 6 * flop_params, peak),
        "peak_memory_gib": mem,
        "flops": "6 * matmul_params * tokens",
        "steps": count,
        "padding": round(1 - tokens / computed, 4),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }


def projection(record: dict, peak: float | None) -> dict:
    """The wall time of MathInstruct-sized scoring at ``record``'s measured rate."""
    seconds = MATHINSTRUCT_TOKENS / record["tok_s"]
    flops = 2 * record["matmul_params"] * MATHINSTRUCT_TOKENS
    yardstick = flops / (YARDSTICK_FRACTION * peak * 1e12) if peak else None
    return {
        "kind": "projection",
        "shape": record["shape"],
        "method": record["method"],
        "max_tokens": record["max_tokens"],
        "examples": MATHINSTRUCT_EXAMPLES,
        "checkpoints": MATHINSTRUCT_CHECKPOINTS,
        "tokens": MATHINSTRUCT_TOKENS,
        "flops": flops,
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "at_40pct_peak_s": None if yardstick is None else round(yardstick, 1),
        "vs_40pct_peak": None if yardstick is None else round(seconds / yardstick, 3),
    }


def rate_fields(tokens: int, seconds: float, flops_per_token: float, peak: float | None) -> dict:
    tflops = tokens * flops_per_token / seconds / 1e12
    return {
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tok_s": round(tokens / seconds, 1),
        "tflops": round(tflops, 6),
        "fraction_of_peak": None if peak is None else round(tflops / peak, 5),
    }


def reference_loss_on(model, arrays: TokenArrays, i: int, device: torch.device) -> float:
    """Example ``i``'s loss as :func:`smalltolarge.losses.reference_loss` computes it (one
    example, fp32, ``model(ids, labels=...).loss``), with the tensors on ``device``."""
    ids = torch.as_tensor(
        arrays.values[arrays.offsets[i] : arrays.offsets[i + 1]], dtype=torch.long
    )
    ids = ids[None].to(device)
    labels = ids.clone()
    labels[0, : int(arrays.response_start[i])] = -100
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)


def timed(
    fn: Callable, items: Sequence, args, device: torch.device, seconds: float | None = None
) -> tuple[list, int, float, float | None]:
    """Call ``fn`` on ``items`` in order: the first ``args.warmup`` untimed (they pick kernels
    and allocate), then timed until ``seconds`` have passed (None: all items).

    Returns ``(results of the timed calls, their count, their seconds, peak memory in GiB or
    None)``; the timed calls are ``items[:count]``, so another method can be run over the very
    same items."""
    limit = math.inf if seconds is None else seconds
    for item in list(items)[: args.warmup]:
        fn(item)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    results = []
    started = time.perf_counter()
    for item in items:
        results.append(fn(item))
        if time.perf_counter() - started >= limit:
            break
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    mem = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None
    return results, len(results), elapsed, mem


if __name__ == "__main__":
    main(sys.argv[1:])
