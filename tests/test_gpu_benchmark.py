"""benchmarks/gpu.py: its --smoke mode runs end to end on a CPU and writes the JSON lines that
the GPU run will write; the shapes it builds for the GPU run are Pythia's."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"

KEYS = {
    "env": {
        "date",
        "device",
        "peak_bf16_tflops",
        "smoke",
        "torch",
        "transformers",
        "python",
        "tokenizer",
        "model_vocab",
        "examples",
        "tokens",
        "mean_tokens_per_example",
        "setup_s",
    },
    "scoring": {
        "shape",
        "method",
        "precision",
        "max_tokens",
        "params",
        "matmul_params",
        "tokens",
        "seconds",
        "tok_s",
        "tflops",
        "fraction_of_peak",
        "peak_memory_gib",
        "flops",
        "examples",
    },
    "training": {
        "shape",
        "precision",
        "optimizer",
        "batch_examples",
        "params",
        "matmul_params",
        "tokens",
        "seconds",
        "tok_s",
        "tflops",
        "fraction_of_peak",
        "peak_memory_gib",
        "flops",
        "steps",
        "padding",
        "first_loss",
        "last_loss",
    },
    "projection": {
        "shape",
        "method",
        "max_tokens",
        "examples",
        "checkpoints",
        "tokens",
        "flops",
        "seconds",
        "minutes",
        "at_40pct_peak_s",
        "vs_40pct_peak",
    },
}
POSITIVE = {
    "env": ("peak_bf16_tflops", "model_vocab", "examples", "tokens", "mean_tokens_per_example"),
    "scoring": (
        "params",
        "matmul_params",
        "tokens",
        "seconds",
        "tok_s",
        "tflops",
        "fraction_of_peak",
        "examples",
    ),
    "training": (
        "batch_examples",
        "params",
        "matmul_params",
        "tokens",
        "seconds",
        "tok_s",
        "tflops",
        "fraction_of_peak",
        "steps",
        "first_loss",
        "last_loss",
    ),
    "projection": (
        "examples",
        "checkpoints",
        "tokens",
        "flops",
        "seconds",
        "minutes",
        "at_40pct_peak_s",
        "vs_40pct_peak",
    ),
}


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("s2l_benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(gpu_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.jsonl"
    # a peak is given so that the fractions of it are computed on a CPU too
    returned = gpu_bench.main(["--smoke", "--peak-tflops", "1", "--out", str(out)])
    return returned, [json.loads(line) for line in out.read_text().splitlines()]


def test_smoke_writes_every_measurement(smoke, gpu_bench):
    returned, lines = smoke
    assert lines == returned
    kinds = [r["kind"] for r in lines]
    shapes = gpu_bench.SMOKE["shapes"].split(",")
    budgets = gpu_bench.SMOKE["max_tokens"].split(",")
    per_shape = 1 + 2 * len(budgets)  # ref, then ours and forward per budget
    assert kinds.count("env") == 1
    assert kinds.count("scoring") == len(shapes) * per_shape
    assert kinds.count("training") == 1
    assert kinds.count("projection") == per_shape
    methods = [(r["shape"], r["method"], r["max_tokens"]) for r in lines if r["kind"] == "scoring"]
    assert methods[:per_shape] == [(shapes[0], "ref", None)] + [
        (shapes[0], m, int(b)) for b in budgets for m in ("ours", "forward")
    ]


def test_smoke_keys_and_values(smoke):
    _, lines = smoke
    for record in lines:
        kind = record["kind"]
        assert set(record) - {"kind", "padding", "max_abs_diff"} == KEYS[kind] - {"padding"}
        for key in POSITIVE[kind]:
            value = record[key]
            assert isinstance(value, int | float) and not isinstance(value, bool), (kind, key)
            assert math.isfinite(value) and value > 0, (kind, key, value)
        if kind in ("scoring", "training"):
            assert record["peak_memory_gib"] is None  # a CPU has no CUDA allocator
            flops = (2 if kind == "scoring" else 6) * record["matmul_params"] * record["tokens"]
            assert record["tflops"] == pytest.approx(flops / record["seconds"] / 1e12, rel=0.01)
            assert record["tok_s"] == pytest.approx(record["tokens"] / record["seconds"], rel=0.01)


def test_smoke_real_values(smoke, gpu_bench):
    _, lines = smoke
    ours = [r for r in lines if r.get("method") == "ours" and r["kind"] == "scoring"]
    # bf16 scoring agrees with the fp32 one-at-a-time reference
    assert all(0 <= r["max_abs_diff"] < 0.05 for r in ours)
    assert all(0 <= r["padding"] <= 0.1 for r in ours)
    # a freshly initialised model predicts about uniformly over its vocabulary
    (training,) = [r for r in lines if r["kind"] == "training"]
    assert training["first_loss"] == pytest.approx(math.log(gpu_bench.SMOKE["vocab"]), abs=0.5)
    # the projection is the MathInstruct token count at the measured rate
    rates = {
        (r["shape"], r["method"], r["max_tokens"]): r["tok_s"]
        for r in lines
        if r["kind"] == "scoring"
    }
    for p in (r for r in lines if r["kind"] == "projection"):
        rate = rates[(p["shape"], p["method"], p["max_tokens"])]
        assert p["seconds"] == pytest.approx(gpu_bench.MATHINSTRUCT_TOKENS / rate, rel=0.01)


def test_shapes_are_pythias(gpu_bench):
    tok = SimpleNamespace(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    meta = torch.device("meta")
    small = gpu_bench.build_model("pythia-70m", 50_304, tok, meta, 0)
    large = gpu_bench.build_model("pythia-410m", 50_304, tok, meta, 0)
    # EleutherAI/pythia-70m and pythia-410m as published
    assert sum(p.numel() for p in small.parameters()) == 70_426_624
    assert sum(p.numel() for p in large.parameters()) == 405_334_016


def test_peak_table(gpu_bench):
    assert gpu_bench.peak_for_name("NVIDIA H200") == pytest.approx(989.4)
    assert gpu_bench.peak_for_name("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert gpu_bench.peak_for_name("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert gpu_bench.peak_for_name("NVIDIA A100-SXM4-80GB") == pytest.approx(312.0)
    assert gpu_bench.peak_for_name("Tesla V100-SXM2-16GB") is None
    assert gpu_bench.peak_tflops(torch.device("cpu")) is None
