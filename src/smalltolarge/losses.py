"""The loss kernel: every example's mean response-token loss under a model, and the training
loss computed the same way.

Scoring a run, recording trajectories while the proxy trains and the held-out evaluation all
compute the same number, so they share this kernel:
- examples of similar length are batched under a token budget (:func:`length_batches`), with
  right padding masked out of attention and loss;
- the backbone runs once, then the output projection and cross-entropy only at response
  positions, never a full (batch x length x vocabulary) logits tensor;
- under ``torch.inference_mode`` and, optionally, bf16/fp16 autocast.

Training (the proxy and the target, :mod:`smalltolarge.training`) computes its loss with
:func:`chunked_lm_loss`: the same projection of the labelled positions only, in chunks, with
gradients, and each chunk recomputed in the backward pass when the labelled logits would not
fit in one chunk, so that no more than one chunk's logits are ever alive.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from smalltolarge.formatting import TokenArrays, length_batches
from smalltolarge.models import autocast_dtype
from smalltolarge.settings import DEFAULT_MAX_TOKENS

# Configurations whose logits are more than lm_head(hidden): these get the plain forward pass.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def score_model(
    model: PreTrainedModel,
    arrays: TokenArrays,
    batches: Sequence[np.ndarray] | None = None,
    *,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    pad_id: int = 0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_batch: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Mean response loss of every example under ``model``: float32 array, shape (n,).

    ``batches`` are index arrays into ``arrays`` (by default :func:`length_batches` with
    ``max_tokens``); ``on_batch`` is called with the number of real tokens of each batch.
    """
    if batches is None:
        batches = length_batches(arrays.lengths, max_tokens)
    model.eval()
    out = np.empty(len(arrays.response_start), dtype=np.float32)
    for rows in batches:
        for _, loss, _ in score_batches(
            model,
            arrays,
            np.asarray(rows),
            max_tokens=None,
            precision=precision,
            device=device,
            pad_id=pad_id,
        ):
            out[rows] = loss
        if on_batch is not None:
            on_batch(int(arrays.lengths[rows].sum()))
    return out


def score_batches(
    model: PreTrainedModel,
    arrays: TokenArrays,
    rows: np.ndarray,
    *,
    max_tokens: int | None,
    precision: str,
    device: str | torch.device,
    pad_id: int,
    embeddings: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Score examples ``rows`` in length batches (``max_tokens`` None: one batch); yields
    (positions within ``rows``, losses, pooled embeddings or None) per batch."""
    device = torch.device(device)
    amp = autocast_dtype(precision)
    batches = (
        [np.arange(len(rows))]
        if max_tokens is None
        else length_batches(arrays.lengths[rows], max_tokens)
    )
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for pos in batches:
            batch = {k: v.to(device) for k, v in arrays.batch(rows[pos], pad_id).items()}
            result = response_losses(model, **batch, return_embeddings=embeddings)
            if embeddings:
                loss, emb = result
                yield pos, loss.float().cpu().numpy(), emb.float().cpu().numpy()
            else:
                yield pos, result.float().cpu().numpy(), None


def response_losses(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    return_embeddings: bool = False,
    max_logit_elements: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood of the labelled tokens of each row: float32, shape (batch,).

    ``labels`` follow the Hugging Face convention (aligned with ``input_ids``, -100 where no
    loss). Only the response positions go through the output projection, in chunks of at most
    ``max_logit_elements`` logits (default: 2**26 on a CPU, in chunks of at most 1,024 rows,
    which stay in cache; 2**28 on an accelerator, where one large matrix product is what keeps
    it busy), so memory stays bounded whatever the vocabulary. With
    ``return_embeddings``, also the last hidden state mean-pooled over each row's real tokens:
    float32, shape (batch, hidden).
    """
    targets = labels[:, 1:]
    mask = targets != -100
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("every row needs at least one labelled token")
    rows = mask.nonzero(as_tuple=True)[0]
    gold = targets[mask]
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix, None)
    if head is None or backbone is None or has_logit_postprocessing(model):
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=return_embeddings,
        )
        nll = F.cross_entropy(output.logits[:, :-1][mask].float(), gold, reduction="none")
        last_hidden = output.hidden_states[-1] if return_embeddings else None
    else:
        last_hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        hidden = last_hidden[:, :-1][mask]
        chunk = logit_chunk_rows(hidden.device, head.weight.shape[0], max_logit_elements)
        nll = torch.cat(
            [
                F.cross_entropy(head(h).float(), g, reduction="none")
                for h, g in zip(hidden.split(chunk), gold.split(chunk), strict=True)
            ]
        )
    sums = torch.zeros(len(input_ids), dtype=torch.float32, device=nll.device)
    sums.index_add_(0, rows, nll.float())
    losses = sums / counts.to(sums.dtype)
    if not return_embeddings:
        return losses
    weights = attention_mask.unsqueeze(-1).float()
    pooled = (last_hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
    return losses, pooled


def chunked_lm_loss(
    model: PreTrainedModel,
    inputs: Mapping[str, Any],
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    forward: Callable[..., Any] | None = None,
    max_logit_elements: int | None = None,
) -> torch.Tensor | None:
    """The training loss of a causal LM, ``model(**inputs).loss`` as Hugging Face computes it,
    without its full (batch x length x vocabulary) logits; None where this cannot be done
    (:func:`supports_chunked_loss` is False, or no token of the batch is labelled).

    ``inputs`` hold ``labels`` (-100 where no loss) and the model's other inputs. The loss is
    HF's: the summed token cross-entropy divided by ``num_items_in_batch`` (the labelled tokens
    of all the micro-batches of an optimiser step, as ``Trainer`` counts them) or, when that is
    None, by this batch's labelled tokens. The model runs through ``forward`` (default: the
    model itself; a ``DistributedDataParallel`` wrapper must be called for its gradients to be
    synchronised) with ``logits_to_keep=1``; its backbone's last hidden state is taken by a
    forward hook, and only the labelled positions go through the output projection and
    cross-entropy, in chunks of at most ``max_logit_elements`` logits (default as in
    :func:`response_losses`). When the labelled logits exceed one chunk, each chunk is
    recomputed in the backward pass (``torch.utils.checkpoint``) instead of being kept.
    Autocast applies as set by the caller.
    """
    if not supports_chunked_loss(model):
        return None
    labels = inputs["labels"]
    targets = labels[:, 1:]
    mask = targets != -100
    n = int(mask.sum())
    if n == 0:
        return None
    head = model.get_output_embeddings()
    backbone = getattr(model, model.base_model_prefix)
    captured: list[torch.Tensor] = []

    def keep_hidden(module, args, output):
        captured.append(output[0])  # last_hidden_state of a ModelOutput or of a tuple

    handle = backbone.register_forward_hook(keep_hidden)
    try:
        rest = {k: v for k, v in inputs.items() if k != "labels"}
        (forward or model)(**rest, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden = captured[-1][:, :-1][mask]
    gold = targets[mask]
    budget = logit_budget(hidden.device, max_logit_elements)
    rows = logit_chunk_rows(hidden.device, head.weight.shape[0], max_logit_elements)
    recompute = n * head.weight.shape[0] > budget
    part = functools.partial(_nll_sum, head)
    total = sum(
        checkpoint(part, h, g, use_reentrant=False) if recompute else part(h, g)
        for h, g in zip(hidden.split(rows), gold.split(rows), strict=True)
    )
    divisor = n if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(divisor):
        divisor = divisor.to(total.device)
    return total / divisor


def _nll_sum(head: torch.nn.Module, hidden: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), gold, reduction="sum")


def supports_chunked_loss(model: PreTrainedModel) -> bool:
    """Whether :func:`chunked_lm_loss` gives ``model``'s own loss: its logits are its output
    projection of its backbone's last hidden state (no soft-capping or scaling), and its
    forward pass takes ``logits_to_keep`` (transformers >= 4.50)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return (
        head is not None
        and getattr(head, "weight", None) is not None
        and isinstance(backbone, torch.nn.Module)
        and not has_logit_postprocessing(model)
        and "logits_to_keep" in inspect.signature(type(model).forward).parameters
    )


def logit_budget(device: torch.device, max_logit_elements: int | None = None) -> int:
    """Logits computed at once by the loss kernel: ``max_logit_elements``, or 2**26 on a CPU
    and 2**28 (1 GiB in fp32) on an accelerator (see :func:`logit_chunk_rows`)."""
    if max_logit_elements:
        return max_logit_elements
    return 1 << 26 if torch.device(device).type == "cpu" else 1 << 28


def logit_chunk_rows(device: torch.device, vocab: int, max_logit_elements: int | None) -> int:
    """Rows of logits computed at once by :func:`response_losses`.

    On a CPU at most 1,024 rows (2**26 logits): larger chunks fall out of cache (measured 4x
    slower head + cross-entropy at 8,000 rows, vocabulary 2,048) and gain nothing. On a GPU
    2**28 logits (1 GiB in fp32) with no row cap: there the 1,024-row chunks left the device
    idle between small products (an H200 scored Pythia-70M's shape at 0.89M tokens/s through
    them, against 2.9M for a plain forward pass; benchmarks/results/gpu).
    """
    rows = max(1, logit_budget(device, max_logit_elements) // vocab)
    return min(1024, rows) if torch.device(device).type == "cpu" else rows


def has_logit_postprocessing(model: PreTrainedModel) -> bool:
    """Whether the model's logits are more than its output projection of the hidden state
    (soft-capping, scaling): then only the plain forward pass gives the right loss."""
    config = model.config
    text_config = getattr(config, "get_text_config", lambda: config)()
    return any(
        getattr(text_config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING
    )


def reference_loss(model: PreTrainedModel, example: dict) -> float:
    """One example's response loss computed the plain way (``model(..., labels=...).loss``),
    as the public reference code does: what :func:`response_losses` must agree with (tests
    and ``benchmarks/scoring.py`` compare against it). Not for scoring."""
    ids = torch.as_tensor(example["input_ids"], dtype=torch.long)[None]
    labels = ids.clone()
    labels[0, : int(example["response_start"])] = -100
    spans = example.get("label_spans") or ()
    for a, b in zip(spans[0::2], spans[1::2], strict=True):
        labels[0, a:b] = ids[0, a:b]
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)
