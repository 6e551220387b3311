"""The training loss without full-vocabulary logits (losses.chunked_lm_loss, used by the
Trainer of the proxy and the target): the same loss and gradients as ``model(**batch).loss``,
through the Trainer with gradient accumulation too, and far less memory."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import GPT2Config, GPT2LMHeadModel, Trainer

from smalltolarge.losses import chunked_lm_loss, supports_chunked_loss
from smalltolarge.models import build_llama, train_bpe_tokenizer
from smalltolarge.training import Recipe, SeededOrderTrainer, fit, training_arguments

from .conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"the cat number {i} sat on mat {i * 7} and ate {i % 13} fish" for i in range(300)]
    return train_bpe_tokenizer(texts, 512)


def padded_batch(vocab: int, *, rows: int = 4, length: int = 14, seed: int = 0) -> dict:
    """Right-padded rows of different lengths, prompts of different lengths masked out."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=gen)
    lengths = torch.tensor([length, length - 3, length - 6, 5][:rows])
    prompts = torch.tensor([4, 2, 6, 3][:rows])
    pos = torch.arange(length)
    mask = (pos[None] < lengths[:, None]).long()
    labels = ids.clone()
    labels[(pos[None] < prompts[:, None]) | (mask == 0)] = -100
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, compute) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def assert_same(a, b, atol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-6, abs=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], atol=atol, rtol=1e-4, msg=name)


class HeadInputs:
    """The shapes the output projection is called with."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.get_output_embeddings().register_forward_hook(
            lambda mod, args, out: self.shapes.append(tuple(args[0].shape))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("items", [None, 37])
@pytest.mark.parametrize("max_logits", [None, 3 * 512])
def test_same_loss_and_gradients_as_the_models_own(tokenizer, tied, items, max_logits):
    """Padding, prompt masking, the accumulated-batch divisor, one chunk or several
    recomputed chunks: the loss and every parameter's gradient are the plain path's."""
    model = tiny_llama(tokenizer, tie_word_embeddings=tied).train()
    batch = padded_batch(len(tokenizer))
    n_items = None if items is None else torch.tensor(items)
    extra = {} if n_items is None else {"num_items_in_batch": n_items}
    plain = loss_and_grads(model, lambda: model(**batch, **extra).loss)
    with HeadInputs(model) as head:
        chunked = loss_and_grads(
            model,
            lambda: chunked_lm_loss(
                model, batch, num_items_in_batch=n_items, max_logit_elements=max_logits
            ),
        )
    assert_same(chunked, plain)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    # the head saw the labelled positions only (plus the one position the forward keeps)
    flat = [s for s in head.shapes if len(s) == 2]
    assert sum(s[0] for s in flat) >= labelled
    assert max(s[0] for s in flat) <= (labelled if max_logits is None else 3)
    assert all(s[1] == 1 for s in head.shapes if len(s) == 3)  # logits_to_keep=1


def test_gpt2_and_bf16_autocast(tokenizer):
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer),
        initializer_range=0.2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(config).train()
    assert gpt2.base_model_prefix == "transformer" and supports_chunked_loss(gpt2)
    batch = padded_batch(len(tokenizer))
    assert_same(
        loss_and_grads(gpt2, lambda: chunked_lm_loss(gpt2, batch, max_logit_elements=2048)),
        loss_and_grads(gpt2, lambda: gpt2(**batch).loss),
    )
    llama = tiny_llama(tokenizer).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = loss_and_grads(llama, lambda: llama(**batch).loss)
        chunked = loss_and_grads(llama, lambda: chunked_lm_loss(llama, batch))
    # bf16 logits either way: equal up to the order of the sums
    assert_same(chunked, plain, atol=1e-3)


def test_models_it_does_not_apply_to(tokenizer):
    model = tiny_llama(tokenizer)
    batch = padded_batch(len(tokenizer))
    model.config.final_logit_softcapping = 30.0
    try:
        assert not supports_chunked_loss(model)
        assert chunked_lm_loss(model, batch) is None
    finally:
        del model.config.final_logit_softcapping
    nothing = dict(batch, labels=torch.full_like(batch["labels"], -100))
    assert chunked_lm_loss(model, nothing) is None  # no labelled token: the model's own loss


def trainer_for(model, tmp_path, *, chunked: bool, **recipe) -> Trainer:
    recipe = Recipe(**{**dict(epochs=1.0, learning_rate=1e-3, batch_size=2, grad_accum=1,
                              warmup_ratio=0.0, precision="fp32", seed=0), **recipe})  # fmt: skip
    cls = type("T", (SeededOrderTrainer,), {"chunked_loss": chunked})
    args = training_arguments(tmp_path, recipe, total_steps=1, save_steps=100, progress=False)
    return cls(model=model, args=args)


@pytest.mark.parametrize("lora", [False, True])
def test_trainer_compute_loss_is_the_stock_one(tokenizer, tmp_path, lora):
    """The Trainer's own scaling (the accumulated-batch divisor) applies; with LoRA adapters
    (peft) the loss and the adapters' gradients are the stock ones."""
    model = tiny_llama(tokenizer).train()
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
        # adapters that are not zero, so that their gradients have something to show
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    batch = padded_batch(len(tokenizer))
    results = []
    for chunked in (True, False):
        trainer = trainer_for(model, tmp_path, chunked=chunked)
        assert (trainer._chunked_loss_model(False) is not None) == chunked
        for items in (None, torch.tensor(50)):
            with HeadInputs(model.get_base_model() if lora else model) as head:
                results.append(
                    loss_and_grads(
                        model,
                        lambda t=trainer, i=items: t.compute_loss(
                            model, dict(batch), num_items_in_batch=i
                        ),
                    )
                )
            assert any(len(s) == 2 for s in head.shapes) == chunked
    assert_same(results[0], results[2])
    assert_same(results[1], results[3])
    assert results[0][0] != pytest.approx(results[1][0])  # the divisor counted


def random_pool(vocab: int, n: int = 24, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 30, n)
    return Dataset.from_dict(
        {
            "input_ids": [rng.integers(3, vocab, k).tolist() for k in lengths],
            "response_start": [int(rng.integers(1, k - 1)) for k in lengths],
            "length": lengths.tolist(),
        }
    )


def test_training_with_accumulation_ends_at_the_same_weights(tokenizer, tmp_path, monkeypatch):
    """fit() with the chunked loss and with the stock loss, batch 3 x accumulation 2, 8 steps:
    the same logged losses and the same trained weights."""
    pool = random_pool(len(tokenizer))
    recipe = Recipe(epochs=2.0, learning_rate=3e-3, batch_size=3, grad_accum=2,
                    warmup_ratio=0.0, precision="fp32", seed=0)  # fmt: skip
    results = []
    for chunked in (True, False):
        monkeypatch.setattr(SeededOrderTrainer, "chunked_loss", chunked)
        model = tiny_llama(tokenizer, seed=1)
        out = tmp_path / str(chunked)
        meta = fit(
            model, pool, recipe, resume_dir=out / "resume", meta_path=out / "meta.json",
            fingerprint="f", save=lambda trainer: {}, total_steps=8, save_steps=100, pad_id=0,
            progress=False,
        )  # fmt: skip
        results.append((meta["train_loss_history"], model.state_dict()))
    (losses_a, weights_a), (losses_b, weights_b) = results
    assert len(losses_a) == len(losses_b) == 8
    np.testing.assert_allclose(np.array(losses_a), np.array(losses_b), rtol=1e-5)
    for name, value in weights_a.items():
        torch.testing.assert_close(value, weights_b[name], atol=2e-5, rtol=1e-4, msg=name)


class Allocations(TorchDispatchMode):
    """Bytes of tensor storage allocated by the ops run under it: the peak of what is alive
    at once, and the largest single tensor (storages are followed until they are freed)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size == 0 or key in self.live:
                    continue
                self.live[key] = size
                self.current += size
                self.peak = max(self.peak, self.current)
                self.largest = max(self.largest, size)
                weakref.finalize(storage, self._freed, key)
        return out

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def test_memory_far_below_the_full_logits(tokenizer):
    """A narrow model with a 32,768-token vocabulary, 8 x 64 tokens: the plain loss
    materialises (8 x 64 x 32,768) logits several times over; the chunked one never more
    than a chunk's, with the chunks recomputed in the backward pass."""
    vocab = 32768
    model = build_llama(tokenizer, hidden_size=16, intermediate_size=32, num_layers=1,
                        num_heads=2, tie_word_embeddings=False)  # fmt: skip
    model.resize_token_embeddings(vocab)
    batch = padded_batch(vocab, rows=4, length=64)
    batch = {k: torch.cat([v, v]) for k, v in batch.items()}  # 8 rows
    full_logits = 8 * 64 * vocab * 4
    chunk = 1 << 16  # logits per chunk: 256 KiB in fp32
    measured = {}
    for name, compute in (
        ("plain", lambda: model(**batch).loss),
        ("chunked", lambda: chunked_lm_loss(model, batch, max_logit_elements=chunk)),
    ):
        model.zero_grad(set_to_none=True)
        with Allocations() as mem:
            compute().backward()
        measured[name] = mem
    plain, chunked = measured["plain"], measured["chunked"]
    assert plain.largest >= full_logits
    assert plain.peak >= 2 * full_logits
    weights = sum(p.numel() * 4 for p in model.parameters())  # the gradients are allocated
    assert chunked.largest <= max(4 * chunk, weights)
    assert chunked.peak < 3 * weights + 8 * 4 * chunk
    assert chunked.peak < plain.peak / 5
