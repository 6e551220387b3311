"""The cost estimate: token counts, parameter counts from configs, FLOPs and wall time."""

from __future__ import annotations

import sys

import pytest

from smalltolarge.cli import main
from smalltolarge.data import load_pool
from smalltolarge.errors import S2LError
from smalltolarge.estimate import compute_parameters, estimate, format_estimate
from smalltolarge.formatting import tokenise_pool
from smalltolarge.models import (
    PRESETS,
    build_preset_model,
    count_parameters,
    init_model,
    load_tokenizer,
    train_pool_tokenizer,
)

N = 40


@pytest.fixture(scope="module")
def small(tmp_path_factory, pool_file):
    """A 40-example pool and an untrained ``tiny`` model directory as the target."""
    root = tmp_path_factory.mktemp("estimate")
    pool = root / "pool.jsonl"
    pool.write_text("".join(pool_file.read_text().splitlines(keepends=True)[:N]))
    target = init_model("tiny", pool, root / "target", vocab_size=1024)
    return pool, target


def test_counts_flops_and_time(small):
    pool, target = small
    est = estimate(
        pool,
        proxy="tiny",
        target=str(target),
        checkpoints=4,
        epochs=2,
        budgets=(0.25, 10),
        max_length=128,
        tokens_per_second=1000.0,
        gpus=2,
    )
    the_pool = load_pool(pool)
    proxy_tok = train_pool_tokenizer(the_pool, PRESETS["tiny"].vocab_size)
    tokens = int(tokenise_pool(the_pool, proxy_tok, max_length=128).lengths.sum())
    target_tokens = int(
        tokenise_pool(the_pool, load_tokenizer(target), max_length=128).lengths.sum()
    )
    assert est.n_examples == N
    assert est.proxy_tokens == tokens and est.target_tokens == target_tokens
    assert target_tokens != tokens  # a different (smaller) vocabulary

    # tiny ties its embeddings: every parameter counts, the same as the real model's
    real = count_parameters(build_preset_model("tiny", proxy_tok, seed=0))
    assert est.proxy_parameters == real
    n_p, n_t = est.proxy_parameters, est.target_parameters
    assert n_t < n_p  # same architecture, smaller vocabulary

    train, score, full, quarter, ten = est.stages
    assert train.flops == pytest.approx(6 * n_p * tokens * 2)
    assert score.flops == pytest.approx(2 * n_p * tokens * 4)
    assert full.flops == pytest.approx(6 * n_t * target_tokens * 2)
    assert quarter.flops == pytest.approx(full.flops * 10 / N)  # 0.25 * 40 = 10 examples
    assert ten.flops == pytest.approx(quarter.flops)
    # 1000 tokens/s of proxy training per device, two devices
    assert train.seconds == pytest.approx(tokens * 2 / 2000)
    assert score.seconds == pytest.approx(tokens * 4 / 3 / 2000)
    assert est.selection_flops == pytest.approx(train.flops + score.flops)
    saved = est.savings[0]
    assert saved["n_examples"] == 10
    assert saved["flops_saved"] == pytest.approx(full.flops - quarter.flops - est.selection_flops)
    text = format_estimate(est)
    assert "selection costs" in text and "budget 0.25 (10 examples)" in text
    # peak memory of both trainings at their batches (tiny's 16, fine-tuning's 8)
    assert list(est.memory) == ["proxy training", "target fine-tuning"]
    proxy_plan = est.memory["proxy training"]
    assert proxy_plan.asked.batch_size == 16 and proxy_plan.asked.longest <= 128
    assert est.memory["target fine-tuning"].asked.batch_size == 8
    assert "proxy training memory: batch 16 needs ~" in text
    assert "target fine-tuning memory: batch 8 needs ~" in text


def test_untied_embedding_is_left_out(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=500,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=False,
    )
    config.save_pretrained(tmp_path)
    from transformers import LlamaForCausalLM

    total = count_parameters(LlamaForCausalLM(config))
    assert compute_parameters(str(tmp_path)) == total - 500 * 32


def test_probe_and_cli(monkeypatch, capsys, small):
    pool, target = small
    est = estimate(pool, proxy="tiny", target=str(target), max_length=64, probe_steps=1)
    assert est.throughput_source.startswith("measured")
    assert all(s.seconds > 0 for s in est.stages)

    args = ["s2l", "estimate", str(pool), "--target", str(target), "--max-length", "64"]
    monkeypatch.setattr(sys, "argv", [*args, "--tokens-per-second", "500", "--budget", "0.5"])
    with pytest.raises(SystemExit) as done:
        main()
    assert not done.value.code
    out = capsys.readouterr().out
    assert "budget 0.5 (20 examples)" in out and "stated: 500" in out


def test_refusals(small):
    pool, target = small
    with pytest.raises(S2LError, match="no such directory"):
        estimate(pool, proxy="tiny", target="/no/such/model", tokens_per_second=1.0)
    with pytest.raises(S2LError):
        estimate(pool, proxy="tiny", target=str(target), budgets=(2.5,), tokens_per_second=1.0)
