"""Score loss trajectories: every example's mean response-token loss at every checkpoint.

The cost S2L users pay is T checkpoints x N examples of forward passes, so the scorer
- batches examples of similar length under a token budget (:func:`length_batches`), with
  right padding masked out of attention and loss;
- runs the backbone only, then the output projection and cross-entropy only at response
  positions, never a full (batch x length x vocabulary) logits tensor;
- runs under ``torch.inference_mode`` and, optionally, bf16/fp16 autocast;
- writes each checkpoint's losses as a unit as soon as it is done, so an interrupted run
  resumes where it stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from smalltolarge.formatting import TokenArrays, length_batches, load_tokenised
from smalltolarge.models import (
    autocast_dtype,
    default_device,
    load_causal_lm,
    resolve_precision,
)
from smalltolarge.proxy import list_checkpoints, read_proxy_meta
from smalltolarge.runs import (
    RunDir,
    atomic_save_npy,
    atomic_write_json,
    fingerprint,
    read_json,
    stage_is_current,
)
from smalltolarge.trajectories import Trajectories

DEFAULT_MAX_TOKENS = 16384

# Configurations whose logits are more than lm_head(hidden): these get the plain forward pass.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def score_trajectories(
    run_dir: str | Path | RunDir,
    *,
    precision: str = "auto",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    device: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Trajectories:
    """Score every scorable example of ``run_dir`` at every proxy checkpoint.

    Reads ``tokenised/`` and ``proxy/step-*``; writes ``trajectories/`` (see
    :mod:`smalltolarge.trajectories`). Finished checkpoints are kept in
    ``trajectories/parts/`` and not recomputed when the run is interrupted and restarted with
    the same inputs and settings; when the inputs changed, the parts are discarded. Skipped
    when ``trajectories/`` already holds the result for the same inputs, unless ``force``.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    tok_pool = load_tokenised(run_dir)
    proxy_meta = read_proxy_meta(run_dir)
    checkpoints = list_checkpoints(run_dir.proxy_dir)
    device = device or default_device()
    precision = resolve_precision(precision, device)
    fp = fingerprint(tok_pool.fingerprint, proxy_meta["fingerprint"], precision, "score-v1")
    out = run_dir.trajectories_dir
    if not force and stage_is_current(out / "meta.json", fp):
        if progress:
            print(f"scoring: {out} is up to date, skipped")
        return Trajectories.load(out)
    parts = out / "parts"
    if parts.is_dir() and not stage_is_current(parts / "parts.json", fp):
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(parts / "parts.json", {"fingerprint": fp})

    arrays = TokenArrays.from_dataset(tok_pool.dataset)
    pad_id = int(proxy_meta.get("pad_token_id") or 0)
    todo = [(s, p) for s, p in checkpoints if not (parts / f"step-{s:08d}.npy").is_file()]
    if progress and len(todo) < len(checkpoints):
        print(
            f"scoring: {len(checkpoints) - len(todo)} of {len(checkpoints)} checkpoints "
            "already scored, resuming"
        )
    batches = length_batches(arrays.lengths, max_tokens)
    total_tokens = int(arrays.lengths.sum())
    bar = tqdm(
        total=total_tokens * len(todo),
        unit="tok",
        unit_scale=True,
        desc="scoring",
        disable=not progress,
    )
    started = time.perf_counter()
    for step, path in todo:
        model = load_causal_lm(path).to(device)
        bar.set_postfix_str(f"step {step}")
        losses = score_model(
            model,
            arrays,
            batches,
            precision=precision,
            device=device,
            pad_id=pad_id,
            on_batch=bar.update,
        )
        atomic_save_npy(parts / f"step-{step:08d}.npy", losses)
        del model
    bar.close()

    losses = np.stack(
        [np.load(parts / f"step-{s:08d}.npy") for s, _ in checkpoints], axis=1
    ).astype(np.float32)
    traj = Trajectories(
        losses=losses,
        ids=np.asarray(tok_pool.dataset["id"], dtype=object),
        steps=[s for s, _ in checkpoints],
        meta={
            "fingerprint": fp,
            "pool_fingerprint": tok_pool.pool_fingerprint,
            "tokenised_fingerprint": tok_pool.fingerprint,
            "proxy_fingerprint": proxy_meta["fingerprint"],
            "proxy": proxy_meta.get("proxy"),
            "precision": precision,
            "loss": "mean token NLL over response tokens + eos (nats)",
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    traj.save(out)
    shutil.rmtree(parts)
    return traj


def load_run_trajectories(run_dir: str | Path | RunDir) -> Trajectories:
    """Load ``RUN/trajectories`` and check it against the run's tokenised pool."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    traj = Trajectories.load(run_dir.trajectories_dir)
    meta = read_json(run_dir.tokenised_meta)
    traj.check_matches(
        meta["pool_fingerprint"], meta["fingerprint"], where=str(run_dir.trajectories_dir)
    )
    return traj


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
    device = torch.device(device)
    amp = autocast_dtype(precision)
    out = np.empty(len(arrays.response_start), dtype=np.float32)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for rows in batches:
            batch = {k: v.to(device) for k, v in arrays.batch(rows, pad_id).items()}
            out[rows] = response_losses(model, **batch).float().cpu().numpy()
            if on_batch is not None:
                on_batch(int(batch["attention_mask"].sum()))
    return out


def response_losses(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    max_logit_elements: int = 1 << 26,
) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled tokens of each row: float32, shape (batch,).

    ``labels`` follow the Hugging Face convention (aligned with ``input_ids``, -100 where no
    loss). Only the response positions go through the output projection, in chunks of at most
    ``max_logit_elements`` logits, so memory stays flat whatever the vocabulary.
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
    if head is None or backbone is None or _has_logit_postprocessing(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1][mask].float(), gold, reduction="none")
    else:
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state[:, :-1][mask]
        chunk = max(1, max_logit_elements // head.weight.shape[0])
        nll = torch.cat(
            [
                F.cross_entropy(head(h).float(), g, reduction="none")
                for h, g in zip(hidden.split(chunk), gold.split(chunk), strict=True)
            ]
        )
    sums = torch.zeros(len(input_ids), dtype=torch.float32, device=nll.device)
    sums.index_add_(0, rows, nll.float())
    return sums / counts.to(sums.dtype)


def _has_logit_postprocessing(model: PreTrainedModel) -> bool:
    config = model.config
    text_config = getattr(config, "get_text_config", lambda: config)()
    return any(
        getattr(text_config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POSTPROCESSING
    )


def reference_loss(model: PreTrainedModel, example: dict) -> float:
    """One example's response loss computed the plain way (``model(..., labels=...).loss``),
    as the public reference code does. For tests and benchmarks, not for scoring."""
    ids = torch.as_tensor(example["input_ids"], dtype=torch.long)[None]
    labels = ids.clone()
    labels[0, : int(example["response_start"])] = -100
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=labels).loss)
