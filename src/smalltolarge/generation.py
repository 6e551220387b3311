"""Greedy, batched, deterministic generation with a causal LM.

:func:`generate` is what :func:`~smalltolarge.evaluate.evaluate` answers the eval prompts
with: prompts sorted by length, left-padded batches, the KV cache, and each row cut at its
first end token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smalltolarge.errors import S2LError
from smalltolarge.models import autocast_dtype, check_tokenizer, resolve_precision


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    add_special_tokens: bool = True,
    progress: bool = False,
) -> list[str]:
    """Greedy completions of ``prompts``, in input order.

    Prompts are sorted by token length (longest first, ties in input order) and cut into
    batches of ``batch_size``, left-padded so that every row's last prompt token sits at the
    same position, and decoded with the KV cache (``model.generate(do_sample=False,
    use_cache=True)``). A row stops at the tokenizer's end-of-sequence token (or any end token
    of the model's generation config) or after ``max_new_tokens`` new tokens. Only the new
    tokens are decoded, without special tokens. The result is deterministic for fixed inputs
    and settings; in fp32 it matches generating each prompt alone.

    Args:
        model: a causal LM; moved to ``device`` when one is given, else used where it is.
        tokenizer: its tokenizer; left unchanged (padding is done here, not by the tokenizer).
        prompts: the formatted prompt texts, length ``n``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto``; half precisions run under autocast.
        add_special_tokens: whether tokenising a prompt adds the tokenizer's special tokens
            (True for the Alpaca template, False for a rendered chat template).

    Returns:
        ``n`` strings, the completion of each prompt.
    """
    check_generation_settings(max_new_tokens, batch_size)
    if not prompts:
        return []
    if device is not None:
        model = model.to(device)
    run_device = next(model.parameters()).device
    dtype = autocast_dtype(resolve_precision(precision, run_device))
    check_tokenizer(tokenizer, getattr(tokenizer, "name_or_path", "the model"))
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    lengths = np.array([len(ids) for ids in encoded])
    if lengths.min() == 0:
        raise S2LError(f"prompt {int(np.argmin(lengths))} is empty after tokenisation")
    # Longest first, so that a batch too large for memory fails at once, not at the end.
    order = np.argsort(-lengths, kind="stable")
    outputs: list[str] = [""] * len(prompts)
    autocast = (
        torch.autocast(device_type=run_device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generating", unit="ex", disable=None if progress else True)
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = _left_pad([encoded[r] for r in rows], pad_id)
                generated = model.generate(
                    input_ids=input_ids.to(run_device),
                    attention_mask=attention_mask.to(run_device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    pad_token_id=pad_id,
                    eos_token_id=eos_ids,
                )
                new_tokens = generated[:, input_ids.shape[1] :].tolist()
                for r, ids in zip(rows, new_tokens, strict=True):
                    outputs[r] = tokenizer.decode(
                        _until_eos(ids, eos_ids),
                        skip_special_tokens=True,
                        clean_up_tokenization_spaces=False,
                    )
                bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return outputs


def check_generation_settings(max_new_tokens: int, batch_size: int) -> None:
    """Raise S2LError unless the generation budget and the batch size are positive."""
    if max_new_tokens < 1:
        raise S2LError(f"max_new_tokens must be positive, not {max_new_tokens}")
    if batch_size < 1:
        raise S2LError(f"batch_size must be positive, not {batch_size}")


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's end token first, then any other end token of the generation config
    (chat models often end a turn with a token the base tokenizer does not call eos)."""
    ids = [int(tokenizer.eos_token_id)]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for token in extra if isinstance(extra, (list, tuple)) else [extra]:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    return ids


def _left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, int64 of shape (batch, longest), padded on the
    left so that generation continues every row from the same position."""
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, longest - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[row, longest - len(seq) :] = 1
    return input_ids, attention_mask


def _until_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    # Finished rows are padded to the batch's length; everything from the first end token on
    # is not part of the answer, whatever the pad token is.
    for k, token in enumerate(ids):
        if token in eos_ids:
            return ids[:k]
    return ids
