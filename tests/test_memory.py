"""The peak-memory estimate of training (estimate.training_memory) and what training does with
it (estimate.plan_batch, training.fit): a batch that would not fit is split with gradient
accumulation, the effective batch and the result kept; one that cannot fit is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import smalltolarge.estimate as estimate
import smalltolarge.training as training
from smalltolarge.errors import S2LError
from smalltolarge.estimate import MEMORY_HEADROOM, available_memory, plan_batch, training_memory
from smalltolarge.losses import chunked_lm_loss
from smalltolarge.models import build_llama, train_bpe_tokenizer
from smalltolarge.training import Recipe, fit

from .conftest import tiny_llama
from .test_training_loss import Allocations, padded_batch, random_pool

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"the dog number {i} ran to gate {i * 3} with {i % 7} bones" for i in range(300)]
    return train_bpe_tokenizer(texts, 512)


def gpt2(vocab: int):
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=512, vocab_size=vocab,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("chunked", [True, False])
def test_the_estimate_bounds_what_a_training_step_allocates(tokenizer, family, precision, chunked):
    """Gradients + activations + logits of the estimate against the tensors one forward and
    backward pass allocates (the weights exist before, AdamW's moments are made by the
    optimiser step): above it, and not by more than 3x."""
    model = (tiny_llama(tokenizer) if family == "llama" else gpt2(len(tokenizer))).train()
    rows, length = 6, 96
    batch = padded_batch(len(tokenizer), rows=4, length=length)
    batch = {k: torch.cat([v, v[:2]]) for k, v in batch.items()}
    amp = precision == "bf16"
    with Allocations() as mem:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = chunked_lm_loss(model, batch) if chunked else model(**batch).loss
        loss.backward()
    est = training_memory(
        model, batch_size=rows, longest=length, precision=precision, chunked=chunked
    )
    weights = sum(p.numel() * 4 for p in model.parameters())
    copies = est.weights - weights  # autocast's low-precision weights, made in the step
    assert copies == (2 * weights // 4 if amp else 0)
    step = est.gradients + est.activations + est.logits + copies
    print(f"{family} {precision} chunked={chunked}: measured {mem.peak:,} estimated {step:,}")
    assert mem.peak <= step <= 3 * mem.peak
    assert est.optimizer == 2 * est.gradients == 2 * weights


def test_the_parts_of_the_estimate(tokenizer):
    model = tiny_llama(tokenizer)
    n = sum(p.numel() for p in model.parameters())
    small = training_memory(model, batch_size=4, longest=100, precision="fp32")
    assert (small.weights, small.gradients, small.optimizer) == (4 * n, 4 * n, 8 * n)
    large = training_memory(model, batch_size=8, longest=100, precision="fp32")
    assert large.activations == 2 * small.activations  # linear in the batch
    assert large.weights == small.weights and large.total > small.total
    full = training_memory(model, batch_size=8, longest=100, precision="fp32", chunked=False)
    assert full.logits == estimate.LOGIT_BYTES["fp32"] * 8 * 100 * len(tokenizer)
    # chunked, the logits beyond one chunk are not counted: at most a chunk's rows
    tight = training_memory(model, batch_size=512, longest=400, precision="fp32")
    assert tight.logits == estimate.LOGIT_BYTES["fp32"] * len(tokenizer) * 1024
    # a peft model trains (and keeps gradients and moments for) its adapters only
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=["q_proj"]))
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    est = training_memory(lora, batch_size=4, longest=100, precision="fp32")
    assert est.gradients == 4 * adapters < small.gradients
    assert est.activations == small.activations


def test_a_42m_smollm2_cut_at_batch_128_does_not_fit_24_gb_with_full_logits():
    """Issue 23's case, on the meta device: 4 layers of SmolLM2 (49,152 tokens), 128 x 339
    tokens, fp32. With the model's own logits it needs far more than 24 GB (it was killed);
    with the chunked loss the logits are a small part."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True)  # fmt: skip
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    sizes = dict(batch_size=128, longest=339, precision="fp32", device="cpu")
    full = training_memory(model, chunked=False, **sizes)
    chunked = training_memory(model, **sizes)
    assert full.logits > 128 * 339 * 49152 * 4  # the 8.5 GB logits and more
    assert full.total > 24e9 > chunked.total
    assert chunked.logits < chunked.activations / 10
    plan = plan_batch(model, grad_accum=1, available=int(24e9), chunked=False, **sizes)
    assert plan.split and plan.batch_size * plan.grad_accum == 128
    # measured (issue 23): batch 16 x 8 ran in 5 GB of RSS; the estimate is above, not far
    sixteen = training_memory(model, chunked=False, **{**sizes, "batch_size": 16})
    assert 5e9 < sixteen.total < 10e9


def test_plan_keeps_splits_or_refuses(tokenizer):
    model = tiny_llama(tokenizer)
    sizes = dict(longest=200, precision="fp32", device="cpu")
    need = {b: training_memory(model, batch_size=b, **sizes).total for b in (1, 2, 3, 4, 6, 12)}
    plenty = plan_batch(model, batch_size=12, grad_accum=2, available=10 * need[12], **sizes)
    assert (plenty.batch_size, plenty.grad_accum, plenty.split) == (12, 2, False)

    # room for 4 but not 6 examples (the weights already in memory count as free)
    resident = sum(p.numel() * 4 for p in model.parameters())
    available = int((need[4] + need[6]) / 2 / MEMORY_HEADROOM) - resident
    plan = plan_batch(model, batch_size=12, grad_accum=2, available=available, **sizes)
    assert (plan.batch_size, plan.grad_accum) == (4, 6)
    assert plan.batch_size * plan.grad_accum == 12 * 2  # the effective batch stays
    assert plan.split and plan.chosen.total == need[4] and plan.asked.total == need[12]
    message = plan.message()
    assert "\n" not in message
    for part in ("batch 12 would need", "batch 4 x 6 accumulation steps", "effective batch of 24"):
        assert part in message
    assert plan.record()["batch_size"] == 4 and plan.record()["split"]

    too_little = int(need[1] / 2)
    with pytest.raises(S2LError, match="even with one example of 200 tokens") as refused:
        plan_batch(model, batch_size=12, grad_accum=2, available=too_little - resident, **sizes)
    assert "GB" in str(refused.value) and "activations" in str(refused.value)


def test_available_memory_of_this_machine():
    free = available_memory("cpu")
    assert free is None or 0 < free < 1 << 50


def test_fit_splits_a_batch_that_would_not_fit_and_trains_the_same(
    tokenizer, tmp_path, monkeypatch, capsys
):
    """fit() with room for 2 of the recipe's 4 examples per batch: 2 x 4 accumulation steps
    instead of 4 x 2, said in one line and recorded; the same steps, the same weights."""
    pool = random_pool(len(tokenizer), n=20)
    recipe = Recipe(epochs=2.0, learning_rate=3e-3, batch_size=4, grad_accum=2,
                    warmup_ratio=0.0, precision="fp32", seed=0)  # fmt: skip
    longest = int(max(pool["length"]))

    def need(model, b):
        return training_memory(model, batch_size=b, longest=longest, precision="fp32").total

    results = []
    for limited in (False, True):
        model = tiny_llama(tokenizer, seed=1)
        resident = sum(p.numel() * 4 for p in model.parameters())
        room = (need(model, 2) + need(model, 4)) / 2 / MEMORY_HEADROOM - resident
        monkeypatch.setattr(training, "available_memory", lambda device, r=room: int(r))
        if not limited:
            monkeypatch.setattr(training, "available_memory", lambda device: None)
        out = tmp_path / str(limited)
        meta = fit(
            model, pool, recipe, resume_dir=out / "resume", meta_path=out / "meta.json",
            fingerprint="f", save=lambda trainer: {}, total_steps=5, save_steps=100, pad_id=0,
            progress=True, name="proxy",
        )  # fmt: skip
        results.append((meta, model.state_dict(), capsys.readouterr().out))
    (plain, weights_a, out_a), (split, weights_b, out_b) = results
    assert plain["memory"]["batch_size"] == 4 and not plain["memory"]["split"]
    assert "memory:" not in out_a
    assert split["memory"]["batch_size"] == 2 and split["memory"]["grad_accum"] == 4
    lines = [line for line in out_b.splitlines() if "memory:" in line]
    assert len(lines) == 1 and lines[0].startswith("proxy: memory: batch 4 would need")
    assert "batch 2 x 4 accumulation steps" in lines[0]
    assert split["global_step"] == plain["global_step"] == 5
    np.testing.assert_allclose(
        [loss for _, loss in split["train_loss_history"]],
        [loss for _, loss in plain["train_loss_history"]],
        rtol=1e-5,
    )
    for name, value in weights_a.items():
        torch.testing.assert_close(value, weights_b[name], atol=2e-5, rtol=1e-4, msg=name)


def test_fit_refuses_when_one_example_would_not_fit(tokenizer, tmp_path, monkeypatch):
    pool = random_pool(len(tokenizer), n=8)
    monkeypatch.setattr(training, "available_memory", lambda device: 1000)
    model = build_llama(tokenizer, hidden_size=32, intermediate_size=64, num_layers=1,
                        num_heads=2)  # fmt: skip
    recipe = Recipe(epochs=1.0, learning_rate=1e-3, batch_size=4, grad_accum=1,
                    warmup_ratio=0.0, precision="fp32", seed=0)  # fmt: skip
    with pytest.raises(S2LError, match="even with one example"):
        fit(
            model, pool, recipe, resume_dir=tmp_path / "resume", meta_path=tmp_path / "m.json",
            fingerprint="f", save=lambda trainer: {}, total_steps=2, save_steps=100, pad_id=0,
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "m.json").exists()
