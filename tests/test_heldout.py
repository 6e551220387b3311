"""Held-out loss: equal to the plain one-example-at-a-time computation, and its summaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smalltolarge.demo_data import DEMO_EVAL, DEMO_POOL
from smalltolarge.evaluate import evaluate
from smalltolarge.formatting import format_prompt
from smalltolarge.heldout import LossResult, summarise_losses
from smalltolarge.models import train_bpe_tokenizer

from .conftest import tiny_llama

N_EVAL = 24
MAX_LENGTH = 160


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny random Llama with a BPE tokenizer trained on part of the demo pool."""
    with open(DEMO_POOL, encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(80)]
    tokenizer = train_bpe_tokenizer((r["instruction"] + r["output"] for r in records), 512)
    directory = tmp_path_factory.mktemp("target")
    tiny_llama(tokenizer, seed=3).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    with open(DEMO_EVAL, encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(N_EVAL)), encoding="utf-8")
    return path


def _direct_loss(model, tokenizer, record: dict) -> float:
    """The plain computation: one example, prompt tokens masked, model(..., labels=).loss."""
    prompt = format_prompt(record["instruction"], record.get("input", ""), template="alpaca")
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([(prompt_ids + response_ids + [tokenizer.eos_token_id])[:MAX_LENGTH]])
    labels = ids.clone()
    labels[0, : len(prompt_ids)] = -100
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)


def test_heldout_loss_equals_direct_computation(target, eval_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = evaluate(
        target,
        eval_file,
        tmp_path,
        metric="loss",
        max_length=MAX_LENGTH,
        precision="fp32",
        device="cpu",
        progress=False,
    )
    assert isinstance(result, LossResult) and result.metric == "loss"
    rows = [json.loads(line) for line in result.predictions_path.read_text().splitlines()]
    records = {
        r["id"]: r for r in (json.loads(line) for line in eval_file.read_text().splitlines())
    }
    assert len(rows) + len(result.excluded) == N_EVAL and len(rows) > N_EVAL // 2
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target)
    direct = np.array([_direct_loss(model, tokenizer, records[r["id"]]) for r in rows])
    got = np.array([r["loss"] for r in rows])
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-5)
    assert result.overall["mean"] == pytest.approx(direct.mean(), abs=1e-5)
    assert result.overall["ci_low"] < result.overall["mean"] < result.overall["ci_high"]
    for row in rows:
        assert row["source"] == records[row["id"]]["source"]
    by_source: dict[str, list[float]] = {}
    for row, loss in zip(rows, direct, strict=True):
        by_source.setdefault(row["source"], []).append(loss)
    for source, losses in by_source.items():
        assert result.per_source[source]["mean"] == pytest.approx(np.mean(losses), abs=1e-5)
    macro = np.mean([np.mean(v) for v in by_source.values()])
    assert result.macro["mean"] == pytest.approx(macro, abs=1e-5)
    saved = json.loads(result.scores_path.read_text())
    assert saved["metric"] == "loss" and saved["macro"]["n"] == len(by_source)


def test_summaries_weigh_each_source_once():
    losses = [1.0, 1.0, 1.0, 3.0]  # source a: three items at 1.0, b: one at 3.0
    summary = summarise_losses(losses, ["a", "a", "a", "b"])
    assert summary["overall"]["mean"] == pytest.approx(1.5)
    assert summary["macro"]["mean"] == pytest.approx(2.0)
    assert summary["macro"]["ci_low"] == pytest.approx(2.0)  # no spread within a source
    assert summary["per_source"]["b"] == {"mean": 3.0, "ci_low": 3.0, "ci_high": 3.0, "n": 1}
    assert summarise_losses(losses, ["a", "a", "a", "b"]) == summary  # seeded
    no_sources = summarise_losses(losses)
    assert no_sources["per_source"] == {} and no_sources["macro"]["mean"] == pytest.approx(1.5)
