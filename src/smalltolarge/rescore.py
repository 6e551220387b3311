"""Scoring examples that are not in the pool at the run's kept proxy checkpoints.

Two features need the loss trajectories of examples the proxy never trained on, at exactly the
steps of the pool's trajectories: ``s2l extend`` (new examples joining the pool, see
:mod:`smalltolarge.extend`) and targeted selection (a target set steering S2L's quotas, see
:mod:`smalltolarge.selection.targeted`). Both tokenise with the run's tokenizer, template and
``max_length`` and score once per kept checkpoint, in the precision the pool was scored in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from smalltolarge.data import Pool, load_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenArrays, TokenisedPool, load_tokenised, tokenise_pool
from smalltolarge.losses import score_batches
from smalltolarge.models import (
    default_device,
    load_causal_lm,
    load_tokenizer,
    pad_token_id,
    tokenizer_fingerprint,
)
from smalltolarge.progress import bar
from smalltolarge.runs import RunDir, read_proxy_meta, step_dirs
from smalltolarge.schema import DETECTED_PAIRS, UnknownColumns
from smalltolarge.settings import DEFAULT_MAX_TOKENS
from smalltolarge.trajectories import load_run_trajectories


def kept_checkpoints(run: RunDir, proxy_meta: dict, steps: list[int]) -> list[tuple[int, Path]]:
    """The saved checkpoints at the trajectories' steps, or a refusal that says how to keep
    them."""
    how = (
        "re-train the proxy keeping them (`s2l train-proxy --save-checkpoints --force`, or "
        "train_proxy(save_checkpoints=True, force=True)), then `s2l score`"
    )
    if not proxy_meta.get("save_checkpoints", True):
        raise S2LError(
            f"{run.root}: the proxy was trained without keeping its checkpoints "
            f"(--no-save-checkpoints), so new examples cannot be scored; {how}"
        )
    kept = dict(step_dirs(run.proxy_dir, "step-"))
    missing = [s for s in steps if s not in kept]
    if missing:
        raise S2LError(
            f"{run.proxy_dir}: no checkpoint for steps {missing} of the trajectories, so new "
            f"examples cannot be scored; {how}"
        )
    return [(s, kept[s]) for s in steps]


def score_at_checkpoints(
    new_tok: TokenisedPool,
    checkpoints: list[tuple[int, Path]],
    *,
    embeddings: bool,
    progress: bool,
    **how: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The new examples' losses, float32 ``(n_new, T)``, one pass per checkpoint, and their
    mean-pooled final-checkpoint embeddings ``(n_new, hidden)`` when ``embeddings``; ``how``
    holds :func:`~smalltolarge.losses.score_batches`'s ``precision``, ``device``, ``pad_id``
    and ``max_tokens``."""
    arrays = TokenArrays.from_dataset(new_tok.dataset)
    rows = np.arange(len(new_tok))
    losses = np.empty((len(rows), len(checkpoints)), dtype=np.float32)
    pooled = None
    with bar(
        progress=progress, total=len(checkpoints), unit="checkpoint", desc="scoring new examples"
    ) as shown:
        for t, (_, path) in enumerate(checkpoints):
            model = load_causal_lm(path).to(how["device"])
            last = embeddings and t == len(checkpoints) - 1
            for pos, loss, emb in score_batches(model, arrays, rows, embeddings=last, **how):
                losses[pos, t] = loss
                if emb is not None:
                    if pooled is None:
                        pooled = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
                    pooled[pos] = emb
            shown.update(1)
    return losses, pooled


def tokenise_like_the_pool(run: RunDir, pool: Pool) -> TokenisedPool:
    """``pool`` tokenised with the run's tokenizer, template, ``max_length`` and labelled
    assistant turns."""
    tokenised = load_tokenised(run)
    tokenizer = load_tokenizer(run.tokenizer_dir)
    if tokenizer_fingerprint(tokenizer) != tokenised.tokenizer_fingerprint:
        raise S2LError(f"{run.tokenizer_dir}: not the tokenizer the pool was tokenised with")
    return tokenise_pool(
        pool,
        tokenizer,
        template=tokenised.template,
        max_length=tokenised.max_length,
        assistant_turns=tokenised.assistant_turns,
    )


def load_target_set(target_set: str | os.PathLike, **pool_options: Any) -> Pool:
    """Read a target set like a pool. Its columns are found by name only (``select`` and
    ``run`` have no column options for it), so a set whose prompt and response columns cannot
    be told is refused with the names to rename them to."""
    try:
        return load_pool(target_set, **pool_options)
    except UnknownColumns as e:
        raise S2LError(
            f"{e.label}: the target set's prompt and response columns cannot be told from "
            f"their names (columns: {', '.join(e.columns)}); rename them to {DETECTED_PAIRS}, "
            "or give it a messages column"
        ) from None


def score_target_set(
    run_dir: str | os.PathLike | RunDir,
    target_set: str | os.PathLike,
    *,
    device: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
    **pool_options: Any,
) -> tuple[np.ndarray, TokenisedPool]:
    """The loss trajectories ``(m, T)`` of a target set's examples at the run's kept
    checkpoints (the steps of the pool's trajectories), and the target set tokenised.

    Raises:
        S2LError: an unreadable target set, no example fitting ``max_length``, or a run
            whose proxy kept no checkpoints (the message says how to keep them).
    """
    run = RunDir.of(run_dir)
    traj = load_run_trajectories(run)
    checkpoints = kept_checkpoints(run, read_proxy_meta(run), traj.steps)
    tok = tokenise_like_the_pool(run, load_target_set(target_set, **pool_options))
    if not len(tok):
        raise S2LError(f"{target_set}: no target example fits max_length")
    losses, _ = score_at_checkpoints(
        tok,
        checkpoints,
        embeddings=False,
        progress=progress,
        pad_id=pad_token_id(load_tokenizer(run.tokenizer_dir)),
        precision=traj.meta.get("precision", "fp32"),
        device=device or default_device(),
        max_tokens=max_tokens,
    )
    return losses, tok
