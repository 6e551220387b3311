"""Scoring and proxy-training throughput on a GPU, against the device's bf16 peak.

One command, no network (models are built from configs; data is synthetic or bundled)::

    benchmarks/gpu.sh --out DIR                    # a CUDA machine; stops itself by --deadline
    python benchmarks/gpu.py --smoke --out DIR     # any CPU, seconds: the same records

What it measures, in real (non-pad) tokens per second, each measurement timed for a few seconds
after untimed warm-up batches, every record one JSON line on stdout and in ``DIR/gpu.jsonl``:

- ``match``: whether scores on this device match a CPU's on the same 200 examples. With
  ``--match-dir`` (made on a CPU by ``benchmarks/gpu_match_fixture.py``: a trained ``tiny``
  proxy, 200 tokenised examples of the bundled pool and that CPU's fp32 scores), the device
  scores them in fp32 and bf16 and each is compared with the CPU's fp32 scores; without it (and
  in every run) a SmolLM2-shaped model with random weights scores 200 synthetic examples on this
  machine's CPU (fp32) and on the device (fp32, bf16). Tolerances: :data:`TOLERANCE`.
- ``scoring``, per shape: ``ours`` (:func:`smalltolarge.losses.score_model` in bf16 autocast,
  the code ``s2l score`` runs, batches built on the host each time) at each token budget of a
  short sweep, then at the fastest budget ``staged`` (the same loss kernel over batches already
  on the device: what host-side batch building costs), ``forward`` (a plain
  ``model(...).logits`` over those staged batches) and ``ref`` (the reference method: one
  example at a time, fp32, ``model(ids, labels=...).loss``).
- ``training``, per shape: AdamW steps in bf16 autocast, ``model(**batch).loss.backward()``,
  length-grouped batches as the proxy's trainer draws them, at each batch size of a sweep.
- ``projection``, per shape: scoring a MathInstruct-size pool (262,000 examples x 12
  checkpoints) and a 10M-example pool at the fastest measured rate (and training 3 epochs on
  the 262k pool at the fastest training rate), next to the same FLOPs at 40% of peak.
  Projections, not measurements.
- ``e2e``: the real stages on the bundled pool on this device: ``prepare`` (tiny proxy),
  ``train_proxy`` (3 epochs, 12 checkpoints, trajectories recorded in training) and a
  stand-alone ``score_trajectories(force=True)``, each timed.

Shapes (random weights; throughput does not depend on them): ``tiny``, the package's ``tiny``
preset (Llama, 2 layers, width 128, a 2,048-token BPE trained on the bundled pool);
``smollm2-135m``, a Llama shaped as SmolLM2-135M (30 layers, width 576, 9 heads, 3 key-value
heads, 49,152-token vocabulary, tied embeddings: 134.5M parameters); ``pythia-70m``, GPTNeoX
shaped as the paper's proxy (6 layers, width 512, 50,304 tokens, untied). The synthetic pool
has MathInstruct's size and about its length (lognormal, mean about 290 tokens, 24 to 1,024;
the response is the last 65% of each example; token ids uniform over the first 2,048).

FLOPs (model FLOPs, as in MFU): a forward costs ``2 * matmul_params * tokens`` and a training
step ``6 * matmul_params * tokens``, where ``matmul_params`` is every parameter but the input
embedding table (a lookup), counted once even when tied to the output layer; the
attention-score term and padding are left out. ``fraction_of_peak`` divides by
:data:`PEAK_BF16_TFLOPS` for the device's name (dense bf16), or by ``--peak-tflops``.
``peak_memory_gib`` is ``torch.cuda.max_memory_allocated`` during the measurement (null on a
CPU). ``--deadline`` seconds after the start, measurements that would not fit are skipped
(recorded as ``skipped``), so a run always ends inside its time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
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
from transformers import (  # noqa: E402
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from smalltolarge.data import load_pool  # noqa: E402
from smalltolarge.demo_data import DEMO_POOL  # noqa: E402
from smalltolarge.formatting import TokenArrays, length_batches  # noqa: E402
from smalltolarge.losses import response_losses, score_model  # noqa: E402
from smalltolarge.models import (  # noqa: E402
    PRESETS,
    build_preset_model,
    count_parameters,
    load_causal_lm,
    train_pool_tokenizer,
)
from smalltolarge.runs import fingerprint  # noqa: E402
from smalltolarge.training import EpochSeededLengthGroupedSampler  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched
#: as substrings of ``torch.cuda.get_device_name()``, first match wins (so "H100 PCIe" comes
#: before "H100").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
)

#: Model shapes: Llama (the package's presets are Llama) or GPTNeoX (Pythia). "smoke-*" are
#: tiny stand-ins for --smoke. "tiny" is built by the package itself (build_preset_model).
SHAPES: dict[str, dict] = {
    "tiny": {"family": "preset"},
    "smollm2-135m": {
        "family": "llama",
        "vocab_size": 49_152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "tie_word_embeddings": True,
        "rope_theta": 100_000.0,
    },
    "pythia-70m": {
        "family": "neox",
        "vocab_size": 50_304,
        "hidden_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
    },
    "smoke-llama": {
        "family": "llama",
        "vocab_size": 512,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "tie_word_embeddings": True,
        "rope_theta": 100_000.0,
    },
    "smoke-neox": {
        "family": "neox",
        "vocab_size": 512,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },
}

#: Token ids of the synthetic pool are drawn below this (the smallest vocabulary measured).
SYNTHETIC_ID_RANGE = 2048
#: MathInstruct's size, S2L's checkpoints, and a pool of the size issue 20 aims at.
MATHINSTRUCT_EXAMPLES = 262_000
CHECKPOINTS = 12
LARGE_POOL_EXAMPLES = 10_000_000
PROXY_EPOCHS = 3
#: The yardstick: the same FLOPs at this fraction of the device's peak.
YARDSTICK_FRACTION = 0.4
#: Per-example agreement asked of the device's scores with a CPU's fp32 scores (nats): fp32 on
#: the device to this max; bf16 autocast to this max and this mean.
TOLERANCE = {"fp32_max": 1e-4, "bf16_max": 0.05, "bf16_mean": 0.01}
MATCH_EXAMPLES = 200

#: Settings for a GPU run and for --smoke (a CPU, seconds); flags override either.
FULL = {
    "shapes": "tiny,smollm2-135m,pythia-70m",
    "budgets": {
        "tiny": "16384,65536,262144,1048576",
        "smollm2-135m": "8192,32768,131072",
        "pythia-70m": "8192,32768,131072",
    },
    "train_batches": {
        "tiny": "16,128,512",
        "smollm2-135m": "16,64,128",
        "pythia-70m": "16,64,128",
    },
    "examples": MATHINSTRUCT_EXAMPLES,
    "seconds": 4.0,
    "ref_seconds": 3.0,
    "train_seconds": 5.0,
    "warmup": 2,
    "deadline": 360.0,
    "e2e": True,
    "e2e_after": "smollm2-135m",
}
SMOKE = {
    "shapes": "tiny,smoke-llama,smoke-neox",
    "budgets": {"tiny": "1024,4096", "smoke-llama": "1024,4096", "smoke-neox": "2048"},
    "train_batches": {"tiny": "4", "smoke-llama": "4,8", "smoke-neox": "4"},
    "examples": 400,
    "seconds": 0.02,
    "ref_seconds": 0.02,
    "train_seconds": 0.02,
    "warmup": 1,
    "deadline": 600.0,
    "e2e": True,
    "e2e_after": "smoke-llama",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the benchmark; print each result as a JSON line (and append it to
    ``OUT/gpu.jsonl``) and return the results as a list of dicts."""
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak = args.peak_tflops if args.peak_tflops else peak_tflops(device)
    results: list[dict] = []
    out_file = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        out_file = args.out / "gpu.jsonl"
        out_file.write_text("", encoding="utf-8")

    def emit(record: dict) -> None:
        # line by line, so a run cut short keeps what it measured
        record = {"kind": record.pop("kind"), "t": round(time.perf_counter() - started, 1)} | (
            record
        )
        results.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        if out_file:
            with out_file.open("a", encoding="utf-8") as f:
                f.write(line + "\n")

    def left() -> float:
        return args.deadline - (time.perf_counter() - started)

    tok = bundled_tokenizer(args)
    id_high = min(vocab_of(shape, tok) for shape in args.shapes.split(","))
    arrays = synthetic_pool(args.examples, args.seed, min(SYNTHETIC_ID_RANGE, id_high))
    emit(
        {
            "kind": "env",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(device),
            "peak_bf16_tflops": peak,
            "smoke": args.smoke,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
            "examples": len(arrays.response_start),
            "tokens": int(arrays.lengths.sum()),
            "mean_tokens_per_example": round(float(arrays.lengths.mean()), 1),
            "max_tokens_per_example": int(arrays.lengths.max()),
            "setup_s": round(time.perf_counter() - started, 2),
        }
    )
    rng = np.random.default_rng(args.seed)
    # 1. agreement with a CPU first: cheap, and the figure every other one rests on
    if args.match_dir:
        emit(match_fixture(args.match_dir, device))
    match_shape = next((s for s in args.shapes.split(",") if SHAPES[s]["family"] == "llama"), None)
    shapes = args.shapes.split(",")
    for shape in shapes:
        model = build_model(shape, tok, device, args.seed)
        log(f"{shape}: {count_parameters(model) / 1e6:.1f}M parameters on {device}")
        if shape == match_shape:
            emit(match_random(model, shape, arrays, rng, device))
        best = None
        scoring: list[dict] = []
        for budget in (int(b) for b in args.budgets[shape].split(",")):
            if left() < args.seconds * 3 + 10:
                emit({"kind": "skipped", "what": f"scoring {shape} at {budget}", "left_s": left()})
                continue
            record = bench_ours(model, shape, arrays, budget, device, peak, args, rng)
            emit(record)
            scoring.append(record)
            if "error" not in record and (best is None or record["tok_s"] > best["tok_s"]):
                best = record
        if best is not None and left() > args.seconds * 3 + args.ref_seconds + 15:
            for record in bench_staged(model, shape, arrays, best, device, peak, args, rng):
                emit(record)
            emit(bench_ref(model, shape, arrays, device, peak, args, rng))
        training: list[dict] = []
        for batch in (int(b) for b in args.train_batches[shape].split(",") if b):
            if left() < args.train_seconds * 2 + 10:
                emit({"kind": "skipped", "what": f"training {shape} at {batch}", "left_s": left()})
                continue
            record = bench_training(shape, tok, arrays, batch, device, peak, args)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            emit(record)
            training.append(record)
        if best is not None:
            fastest_training = max(
                (r for r in training if "error" not in r), key=lambda r: r["tok_s"], default=None
            )
            emit(projection(best, fastest_training, arrays, peak))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # the package's own stages on the device, before the shapes that are extras
        if args.e2e and (shape == args.e2e_after or shape == shapes[-1]):
            args.e2e = False
            if left() > (90 if not args.smoke else 0):
                emit(end_to_end(device, args))
            else:
                emit({"kind": "skipped", "what": "e2e", "left_s": left()})
    log(f"done in {time.perf_counter() - started:.0f} s")
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU, seconds")
    parser.add_argument("--out", type=Path, default=None, help="write gpu.jsonl in this folder")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the table")
    parser.add_argument("--shapes", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--examples", type=int, help="synthetic pool size (262,000)")
    parser.add_argument("--seconds", type=float, help="time for each scoring measurement")
    parser.add_argument("--ref-seconds", type=float, help="time for the reference method")
    parser.add_argument("--train-seconds", type=float, help="time for each training batch size")
    parser.add_argument("--warmup", type=int, help="untimed batches before each measurement")
    parser.add_argument("--deadline", type=float, help="skip what would end after this (s)")
    parser.add_argument("--match-dir", type=Path, help="from benchmarks/gpu_match_fixture.py")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", default=None)
    parser.add_argument("--e2e-after", help="run the stages after this shape (else the last)")
    parser.add_argument(
        "--budgets", help="scoring budgets per shape: 'tiny=65536,262144;pythia-70m=131072'"
    )
    parser.add_argument(
        "--train-batches", help="training batch sizes per shape, same form; '' skips training"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    for key, value in defaults.items():
        if key not in ("budgets", "train_batches") and getattr(args, key, None) is None:
            setattr(args, key, value)
    args.budgets = dict(defaults["budgets"]) | per_shape(args.budgets, parser)
    given_batches = args.train_batches
    args.train_batches = dict(defaults["train_batches"]) | per_shape(given_batches, parser)
    if given_batches == "":
        args.train_batches = {shape: "" for shape in SHAPES}
    if args.smoke and args.device is None:
        args.device = "cpu"
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    for shape in args.shapes.split(","):
        args.budgets.setdefault(shape, "8192,32768")
        args.train_batches.setdefault(shape, "16")
    return args


def per_shape(text: str | None, parser: argparse.ArgumentParser) -> dict[str, str]:
    """``'a=1,2;b=3'`` -> ``{'a': '1,2', 'b': '3'}``."""
    out = {}
    for part in filter(None, (text or "").split(";")):
        shape, _, values = part.partition("=")
        if shape not in SHAPES or not values:
            parser.error(f"expected SHAPE=N,N,... with a shape of {', '.join(SHAPES)}: {part!r}")
        out[shape] = values
    return out


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


def bundled_tokenizer(args: argparse.Namespace):
    """The tiny preset's tokenizer: a BPE trained on the bundled pool (its first 200 examples
    in --smoke), as ``s2l prepare --proxy tiny`` trains it."""
    pool = load_pool(DEMO_POOL)
    if args.smoke:
        pool = dataclasses.replace(
            pool, dataset=pool.dataset.select(range(200)), fingerprint=fingerprint("smoke")
        )
    return train_pool_tokenizer(pool, PRESETS["tiny"].vocab_size)


def vocab_of(shape: str, tok) -> int:
    return len(tok) if SHAPES[shape]["family"] == "preset" else SHAPES[shape]["vocab_size"]


def synthetic_pool(n: int, seed: int, id_high: int = SYNTHETIC_ID_RANGE) -> TokenArrays:
    """``n`` examples of about MathInstruct's lengths (lognormal, mean ~290 tokens, clipped to
    24..1,024), the response the last 65% of each, token ids uniform in ``[3, id_high)``."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(250.0), 0.55, size=n)), 24, 1024).astype(
        np.int64
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(3, id_high, size=int(offsets[-1]), dtype=np.int32)
    response_start = np.maximum(1, np.rint(lengths * 0.35)).astype(np.int64)
    return TokenArrays(values=values, offsets=offsets, response_start=response_start)


def subset(arrays: TokenArrays, rows: np.ndarray) -> TokenArrays:
    """The examples ``rows`` of ``arrays`` as a new, contiguous :class:`TokenArrays`."""
    starts, ends = arrays.offsets[rows], arrays.offsets[rows + 1]
    values = np.concatenate([arrays.values[s:e] for s, e in zip(starts, ends, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    return TokenArrays(values, offsets, arrays.response_start[rows].copy())


def build_model(shape: str, tok, device: torch.device, seed: int):
    """A model of ``shape`` with random weights, fp32, in eval mode on ``device``."""
    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    if family == "preset":
        return build_preset_model(shape, tok, seed).to(device).eval()
    special = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if family == "llama":
        config = LlamaConfig(max_position_embeddings=2048, **special, **spec)
        cls = LlamaForCausalLM
    else:
        config = GPTNeoXConfig(
            intermediate_size=4 * spec["hidden_size"],
            max_position_embeddings=2048,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **special,
            **spec,
        )
        cls = GPTNeoXForCausalLM
    torch.manual_seed(seed)
    # built on the device: initialising 135M parameters on the host takes longer than scoring
    with device:
        model = cls(config)
    return model.eval()


def matmul_params(model) -> int:
    """Parameters that take part in multiply-adds: all but the input embedding table (a tied
    output layer shares that tensor, so it is counted once, as the output layer)."""
    inputs = model.get_input_embeddings().weight
    outputs = model.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs
    return count_parameters(model) - (0 if tied else inputs.numel())


def rate_fields(tokens: int, seconds: float, flops_per_token: float, peak: float | None) -> dict:
    tflops = tokens * flops_per_token / seconds / 1e12
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "tflops": tflops,
        "fraction_of_peak": None if peak is None else tflops / peak,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable, items: Sequence, warmup: int, device: torch.device, seconds: float | None
) -> tuple[list, int, float, float | None]:
    """Call ``fn`` on ``items``: the first ``warmup`` untimed (they pick kernels and allocate),
    then from the start of ``items`` timed until ``seconds`` have passed (None: all items).

    Returns ``(results of the timed calls, their count, their seconds, peak memory in GiB or
    None)``; the timed calls are ``items[:count]``, so another method can be run over the very
    same items."""
    limit = math.inf if seconds is None else seconds
    for item in list(items)[:warmup]:
        fn(item)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = []
    started = time.perf_counter()
    for item in items:
        results.append(fn(item))
        if time.perf_counter() - started >= limit:
            break
    synchronize(device)
    elapsed = time.perf_counter() - started
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return results, len(results), elapsed, mem


def shuffled_batches(arrays: TokenArrays, budget: int, rng) -> list[np.ndarray]:
    """Length batches of ``budget`` tokens, in a seeded random order (a timed slice of them is
    then a fair sample of the pool's lengths)."""
    batches = length_batches(arrays.lengths, budget)
    return [batches[i] for i in rng.permutation(len(batches))]


def scoring_record(model, shape, method, budget, precision, tokens, seconds, mem, peak, **extra):
    return {
        "kind": "scoring",
        "shape": shape,
        "method": method,
        "precision": precision,
        "max_tokens": budget,
        "params": count_parameters(model),
        "matmul_params": matmul_params(model),
        **rate_fields(tokens, seconds, 2 * matmul_params(model), peak),
        "peak_memory_gib": mem,
        **extra,
    }


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error)


def bench_ours(model, shape, arrays, budget, device, peak, args, rng) -> dict:
    """``score_model`` (the code ``s2l score`` runs) at a token budget, bf16."""
    batches = shuffled_batches(arrays, budget, rng)
    pad_id = int(model.config.pad_token_id or 0)

    def ours(rows):
        return score_model(model, arrays, [rows], precision="bf16", device=device, pad_id=pad_id)

    try:
        _, count, seconds, mem = timed(ours, batches, args.warmup, device, args.seconds)
    except RuntimeError as error:
        if not is_oom(error):
            raise
        torch.cuda.empty_cache()
        return {"kind": "scoring", "shape": shape, "method": "ours", "max_tokens": budget,
                "error": "out of memory"}  # fmt: skip
    done = batches[:count]
    tokens = int(sum(arrays.lengths[b].sum() for b in done))
    computed = sum(len(b) * int(arrays.lengths[b].max()) for b in done)
    record = scoring_record(
        model, shape, "ours", budget, "bf16", tokens, seconds, mem, peak,
        examples=int(sum(len(b) for b in done)), batches=count,
        padding=1 - tokens / computed,
    )  # fmt: skip
    log(f"  ours at {budget}: {record['tok_s']:,.0f} tok/s ({count} batches)")
    return record


def bench_staged(model, shape, arrays, best, device, peak, args, rng) -> list[dict]:
    """At the fastest budget: the loss kernel over batches already on the device, and a plain
    ``.logits`` forward over the same batches (host-side batch building left out of both)."""
    budget = best["max_tokens"]
    batches = shuffled_batches(arrays, budget, rng)[: max(best["batches"], args.warmup + 1)]
    pad_id = int(model.config.pad_token_id or 0)
    staged = [{k: v.to(device) for k, v in arrays.batch(b, pad_id).items()} for b in batches]
    amp = {"device_type": device.type, "dtype": torch.bfloat16}

    def kernel(batch):
        with torch.inference_mode(), torch.autocast(**amp):
            return response_losses(model, **batch)

    def forward(batch):
        with torch.inference_mode(), torch.autocast(**amp):
            return model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            ).logits.shape

    records = []
    for method, fn in (("staged", kernel), ("forward", forward)):
        try:
            _, count, seconds, mem = timed(fn, staged, args.warmup, device, args.seconds)
        except RuntimeError as error:
            if not is_oom(error):
                raise
            torch.cuda.empty_cache()
            records.append({"kind": "scoring", "shape": shape, "method": method,
                            "max_tokens": budget, "error": "out of memory"})  # fmt: skip
            continue
        tokens = int(sum(arrays.lengths[b].sum() for b in batches[:count]))
        records.append(
            scoring_record(
                model,
                shape,
                method,
                budget,
                "bf16",
                tokens,
                seconds,
                mem,
                peak,
                examples=int(sum(len(b) for b in batches[:count])),
                batches=count,
            )  # fmt: skip
        )
        log(f"  {method} at {budget}: {records[-1]['tok_s']:,.0f} tok/s")
    del staged
    return records


def bench_ref(model, shape, arrays, device, peak, args, rng) -> dict:
    """The reference method: one example at a time, fp32, ``model(ids, labels=...).loss``."""
    n = len(arrays.response_start)
    rows = rng.choice(n, size=min(2000, n), replace=False)

    def one(i):
        return reference_loss_on(model, arrays, int(i), device)

    _, count, seconds, mem = timed(one, rows, args.warmup, device, args.ref_seconds)
    tokens = int(arrays.lengths[rows[:count]].sum())
    record = scoring_record(
        model, shape, "ref", None, "fp32", tokens, seconds, mem, peak, examples=count
    )
    log(f"  ref: {record['tok_s']:,.0f} tok/s ({count} examples)")
    return record


def reference_loss_on(model, arrays: TokenArrays, i: int, device: torch.device) -> float:
    """Example ``i``'s loss as :func:`smalltolarge.losses.reference_loss` computes it."""
    ids = torch.as_tensor(arrays.values[arrays.offsets[i] : arrays.offsets[i + 1]].astype(np.int64))
    ids = ids[None].to(device)
    labels = ids.clone()
    labels[0, : int(arrays.response_start[i])] = -100
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)


def bench_training(shape, tok, arrays, batch_size, device, peak, args) -> dict:
    """AdamW steps in bf16 autocast on a fresh copy of the shape, length-grouped batches."""
    model = build_model(shape, tok, device, args.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    # the sampler over a random slice of the pool: enough batches for the timed seconds
    rows = np.random.default_rng(args.seed).choice(
        len(arrays.response_start), size=min(len(arrays.response_start), batch_size * 400),
        replace=False,
    )  # fmt: skip
    lengths = arrays.lengths[rows]
    sampler = EpochSeededLengthGroupedSampler(batch_size, lengths.tolist(), args.seed)
    order = rows[np.fromiter(iter(sampler), dtype=np.int64)]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pad_id = int(model.config.pad_token_id or 0)

    def step(b):
        batch = {k: v.to(device) for k, v in arrays.batch(b, pad_id).items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    try:
        losses, count, seconds, mem = timed(step, batches, args.warmup, device, args.train_seconds)
    except RuntimeError as error:
        if not is_oom(error):
            raise
        return {"kind": "training", "shape": shape, "batch_examples": batch_size,
                "error": "out of memory"}  # fmt: skip
    done = batches[:count]
    tokens = int(sum(arrays.lengths[b].sum() for b in done))
    computed = sum(len(b) * int(arrays.lengths[b].max()) for b in done)
    flop_params = matmul_params(model)
    record = {
        "kind": "training",
        "shape": shape,
        "precision": "bf16",
        "optimizer": "AdamW",
        "batch_examples": batch_size,
        "params": count_parameters(model),
        "matmul_params": flop_params,
        **rate_fields(tokens, seconds, 6 * flop_params, peak),
        "peak_memory_gib": mem,
        "steps": count,
        "padding": 1 - tokens / computed,
        "first_loss": float(losses[0]),
        "last_loss": float(losses[-1]),
    }
    log(f"  training at batch {batch_size}: {record['tok_s']:,.0f} tok/s ({count} steps)")
    return record


def projection(best: dict, training: dict | None, arrays: TokenArrays, peak) -> dict:
    """Wall times at the fastest measured rates (projections, not measurements)."""
    mean = float(arrays.lengths.mean())
    tokens_262k = mean * MATHINSTRUCT_EXAMPLES * CHECKPOINTS
    tokens_10m = mean * LARGE_POOL_EXAMPLES * CHECKPOINTS
    flops = 2 * best["matmul_params"] * tokens_262k
    yardstick = flops / (YARDSTICK_FRACTION * peak * 1e12) if peak else None
    record = {
        "kind": "projection",
        "shape": best["shape"],
        "scoring_max_tokens": best["max_tokens"],
        "scoring_tok_s": best["tok_s"],
        "mean_tokens_per_example": mean,
        "checkpoints": CHECKPOINTS,
        "score_262k_s": tokens_262k / best["tok_s"],
        "score_10m_s": tokens_10m / best["tok_s"],
        "score_262k_at_40pct_peak_s": yardstick,
    }
    if training is not None:
        record |= {
            "training_batch": training["batch_examples"],
            "training_tok_s": training["tok_s"],
            "train_262k_3_epochs_s": mean
            * MATHINSTRUCT_EXAMPLES
            * PROXY_EPOCHS
            / training["tok_s"],
        }
    return record


def compare(scores: np.ndarray, cpu: np.ndarray, precision: str) -> dict:
    diff = np.abs(scores.astype(np.float64) - cpu.astype(np.float64))
    limit_max = TOLERANCE[f"{precision}_max"]
    ok = bool(diff.max() <= limit_max)
    if precision == "bf16":
        ok = ok and bool(diff.mean() <= TOLERANCE["bf16_mean"])
    return {
        f"{precision}_max_abs_diff": float(diff.max()),
        f"{precision}_mean_abs_diff": float(diff.mean()),
        f"{precision}_within_tolerance": ok,
    }


def match_fixture(match_dir: Path, device: torch.device) -> dict:
    """A trained tiny proxy's scores on this device against those a CPU wrote."""
    fixture = json.loads((match_dir / "cpu.json").read_text())
    data = np.load(match_dir / "arrays.npz")
    arrays = TokenArrays(data["values"], data["offsets"], data["response_start"])
    model = load_causal_lm(match_dir / "model").to(device).eval()
    cpu = np.asarray(fixture["fp32"], dtype=np.float64)
    record = {
        "kind": "match",
        "model": "tiny proxy trained on the bundled pool (gpu_match_fixture.py)",
        "examples": len(cpu),
        "cpu": fixture["cpu"],
        "cpu_torch": fixture["torch"],
        "mean_cpu_loss": float(cpu.mean()),
        "tolerance": TOLERANCE,
    }
    for precision in ("fp32", "bf16"):
        scores = score_model(
            model, arrays, precision=precision, device=device, pad_id=fixture["pad_id"]
        )
        record |= compare(scores, cpu, precision)
    log(f"  match (fixture): {record}")
    return record


def match_random(model, shape, arrays, rng, device: torch.device) -> dict:
    """The shape's scores of 200 synthetic examples (of at most 256 tokens) on this device
    against this machine's CPU (fp32), same weights."""
    short = np.flatnonzero(arrays.lengths <= 256)  # the CPU side is fp32 on the host: keep it short
    rows = np.sort(rng.choice(short, size=min(MATCH_EXAMPLES, len(short)), replace=False))
    sample = subset(arrays, rows)
    pad_id = int(model.config.pad_token_id or 0)
    cpu_model = model.to("cpu")
    cpu = score_model(cpu_model, sample, precision="fp32", device="cpu", pad_id=pad_id)
    model = cpu_model.to(device)
    record = {
        "kind": "match",
        "model": f"{shape}, random weights",
        "examples": len(rows),
        "cpu": f"this machine's CPU, {torch.get_num_threads()} threads",
        "cpu_torch": torch.__version__,
        "mean_cpu_loss": float(cpu.mean()),
        "tolerance": TOLERANCE,
    }
    for precision in ("fp32", "bf16"):
        scores = score_model(model, sample, precision=precision, device=device, pad_id=pad_id)
        record |= compare(scores, cpu, precision)
    log(f"  match ({shape}): {record}")
    return record


def end_to_end(device: torch.device, args: argparse.Namespace) -> dict:
    """``prepare`` -> ``train_proxy`` (recording trajectories) -> ``score_trajectories`` on
    the bundled pool with the tiny proxy, on ``device`` (the package picks CUDA when there is
    one), each stage timed."""
    from smalltolarge.prepare import prepare
    from smalltolarge.proxy import train_proxy
    from smalltolarge.scoring import score_trajectories
    from smalltolarge.trajectories import load_run_trajectories

    pool_path = DEMO_POOL
    epochs, checkpoints = PROXY_EPOCHS, CHECKPOINTS
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            pool_path = Path(tmp) / "pool.jsonl"
            lines = Path(DEMO_POOL).read_text(encoding="utf-8").splitlines()[:120]
            pool_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            epochs, checkpoints = 1.0, 2
        run_dir = Path(tmp) / "run"
        times = {}
        started = time.perf_counter()
        prepared = prepare(pool_path, run_dir, proxy="tiny", max_length=256, progress=False)
        times["prepare_s"] = time.perf_counter() - started
        started = time.perf_counter()
        steps = train_proxy(run_dir, epochs=epochs, n_checkpoints=checkpoints, progress=False)
        synchronize(device)
        times["train_proxy_s"] = time.perf_counter() - started
        started = time.perf_counter()
        score_trajectories(run_dir, force=True, progress=False)
        synchronize(device)
        times["score_s"] = time.perf_counter() - started
        trajectories = load_run_trajectories(run_dir)
        losses = np.asarray(trajectories.losses)
        record = {
            "kind": "e2e",
            "pool": Path(pool_path).name,
            "examples": len(prepared.tokenised.dataset),
            "epochs": epochs,
            "checkpoints": len(steps),
            "trajectories_shape": list(losses.shape),
            "all_finite": bool(np.isfinite(losses).all()),
            "mean_first_loss": float(losses[:, 0].mean()),
            "mean_last_loss": float(losses[:, -1].mean()),
            "device_used": str(device),
            **times,
        }
    log(f"  e2e: {record}")
    return record


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
