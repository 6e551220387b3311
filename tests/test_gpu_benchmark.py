"""benchmarks/gpu.py: its --smoke mode runs end to end on a CPU and writes the records that the
GPU run writes; the shapes it builds for the GPU run are SmolLM2-135M's and Pythia-70M's."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"

RATE_KEYS = {"tokens", "seconds", "tok_s", "tflops", "fraction_of_peak"}


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("s2l_benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(gpu_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    # a peak is given so that the fractions of it are computed on a CPU too
    returned = gpu_bench.main(["--smoke", "--peak-tflops", "1", "--out", str(out)])
    lines = [json.loads(line) for line in (out / "gpu.jsonl").read_text().splitlines()]
    return returned, lines


def test_smoke_writes_every_measurement(smoke, gpu_bench):
    returned, lines = smoke
    assert lines == returned
    kinds = [r["kind"] for r in lines]
    shapes = gpu_bench.SMOKE["shapes"].split(",")
    assert kinds[0] == "env" and kinds.count("env") == 1
    assert "skipped" not in kinds
    for shape in shapes:
        budgets = [int(b) for b in gpu_bench.SMOKE["budgets"][shape].split(",")]
        scoring = [(r["method"], r["max_tokens"]) for r in lines if r.get("shape") == shape
                   and r["kind"] == "scoring"]  # fmt: skip
        assert scoring[: len(budgets)] == [("ours", b) for b in budgets]
        best = max(
            (r for r in lines if r.get("shape") == shape and r.get("method") == "ours"),
            key=lambda r: r["tok_s"],
        )["max_tokens"]
        assert scoring[len(budgets) :] == [("staged", best), ("forward", best), ("ref", None)]
        batches = [r["batch_examples"] for r in lines if r["kind"] == "training"
                   and r["shape"] == shape]  # fmt: skip
        assert batches == [int(b) for b in gpu_bench.SMOKE["train_batches"][shape].split(",")]
        assert sum(r["kind"] == "projection" and r["shape"] == shape for r in lines) == 1
    # the CPU-vs-device check runs on the first Llama-shaped model; the stages once
    assert [r["model"] for r in lines if r["kind"] == "match"] == ["smoke-llama, random weights"]
    assert kinds.count("e2e") == 1


def test_smoke_values(smoke, gpu_bench):
    _, lines = smoke
    for record in lines:
        kind = record["kind"]
        if kind in ("scoring", "training"):
            assert set(record) >= RATE_KEYS
            for key in RATE_KEYS | {"params", "matmul_params"}:
                value = record[key]
                assert isinstance(value, int | float) and math.isfinite(value) and value > 0
            assert record["peak_memory_gib"] is None  # a CPU has no CUDA allocator
            flops = (2 if kind == "scoring" else 6) * record["matmul_params"] * record["tokens"]
            # unrounded figures: the rate is exactly tokens / seconds
            assert record["tflops"] == pytest.approx(flops / record["seconds"] / 1e12, rel=1e-9)
            assert record["tok_s"] == pytest.approx(record["tokens"] / record["seconds"], rel=1e-9)
        if kind == "scoring" and record["method"] == "ours":
            assert 0 <= record["padding"] <= 0.1
    (env,) = [r for r in lines if r["kind"] == "env"]
    # MathInstruct-like lengths: mean ~290 tokens, capped at 1,024
    assert 250 < env["mean_tokens_per_example"] < 330 and env["max_tokens_per_example"] <= 1024
    # a freshly initialised model predicts about uniformly over its vocabulary
    first = [r for r in lines if r["kind"] == "training" and r["shape"] == "smoke-llama"][0]
    vocab = gpu_bench.SHAPES["smoke-llama"]["vocab_size"]
    assert first["first_loss"] == pytest.approx(math.log(vocab), abs=0.5)


def test_smoke_match_and_projection(smoke, gpu_bench):
    _, lines = smoke
    (match,) = [r for r in lines if r["kind"] == "match"]
    # the smoke's "device" is the CPU itself: fp32 agrees exactly, bf16 within the tolerance
    assert match["fp32_max_abs_diff"] == 0.0 and match["fp32_within_tolerance"]
    assert 0 < match["bf16_max_abs_diff"] <= gpu_bench.TOLERANCE["bf16_max"]
    assert match["bf16_within_tolerance"]
    (env,) = [r for r in lines if r["kind"] == "env"]
    for p in (r for r in lines if r["kind"] == "projection"):
        tokens = env["mean_tokens_per_example"] * gpu_bench.MATHINSTRUCT_EXAMPLES * 12
        assert p["score_262k_s"] == pytest.approx(tokens / p["scoring_tok_s"], rel=1e-3)
        assert p["score_10m_s"] / p["score_262k_s"] == pytest.approx(10_000_000 / 262_000)
    (e2e,) = [r for r in lines if r["kind"] == "e2e"]
    assert e2e["all_finite"] and e2e["trajectories_shape"] == [e2e["examples"], 2]
    assert e2e["mean_last_loss"] < e2e["mean_first_loss"]


def test_compare_flags_a_difference(gpu_bench):
    cpu = np.array([1.0, 2.0, 3.0])
    assert gpu_bench.compare(cpu + 5e-5, cpu, "fp32")["fp32_within_tolerance"]
    assert not gpu_bench.compare(cpu + 2e-4, cpu, "fp32")["fp32_within_tolerance"]
    assert gpu_bench.compare(cpu + 0.005, cpu, "bf16")["bf16_within_tolerance"]
    # the mean is held tighter than the max
    assert not gpu_bench.compare(cpu + 0.02, cpu, "bf16")["bf16_within_tolerance"]


def test_shapes(gpu_bench):
    tok = SimpleNamespace(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    meta = torch.device("meta")
    smol = gpu_bench.build_model("smollm2-135m", tok, meta, 0)
    pythia = gpu_bench.build_model("pythia-70m", tok, meta, 0)
    # HuggingFaceTB/SmolLM2-135M and EleutherAI/pythia-70m as published
    assert sum(p.numel() for p in smol.parameters()) == 134_515_008
    assert sum(p.numel() for p in pythia.parameters()) == 70_426_624
    # the tied output layer is counted once, the untied input table not at all
    assert gpu_bench.matmul_params(smol) == 134_515_008
    assert gpu_bench.matmul_params(pythia) == 70_426_624 - 50_304 * 512


def test_peak_table(gpu_bench):
    assert gpu_bench.peak_for_name("NVIDIA H200") == pytest.approx(989.4)
    assert gpu_bench.peak_for_name("NVIDIA GH200 480GB") == pytest.approx(989.4)
    assert gpu_bench.peak_for_name("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert gpu_bench.peak_for_name("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert gpu_bench.peak_for_name("NVIDIA A100-SXM4-80GB") == pytest.approx(312.0)
    assert gpu_bench.peak_for_name("Tesla V100-SXM2-16GB") is None
    assert gpu_bench.peak_tflops(torch.device("cpu")) is None


def test_per_shape_flags(gpu_bench):
    args = gpu_bench.parse_args(["--smoke", "--budgets", "tiny=64,128", "--train-batches", ""])
    assert args.budgets["tiny"] == "64,128" and args.budgets["smoke-llama"] == "1024,4096"
    assert all(v == "" for v in args.train_batches.values())
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--smoke", "--budgets", "nope=1"])
