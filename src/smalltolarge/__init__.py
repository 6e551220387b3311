"""smalltolarge: S2L (SmallToLarge) data selection for supervised fine-tuning.

Train a small proxy on the whole pool, record every example's loss at every checkpoint, cluster
the trajectories and sample a balanced subset for the large model. The stages, in order::

    from smalltolarge import prepare, train_proxy, score_trajectories, select_subset

    prepare("pool.jsonl", "runs/x", proxy="tiny")    # load + tokenise with the response mask
    train_proxy("runs/x", n_checkpoints=12)          # proxy/step-*/
    score_trajectories("runs/x")                     # trajectories/losses.npy (N x T) + ids
    result = select_subset("runs/x", method="s2l", budget=0.3, seed=0)

or all at once with :func:`run_pipeline`.

Imports are lazy: ``import smalltolarge`` (and ``s2l --help``) loads no torch until a
name that needs it is used.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Set before torch loads (OpenMP reads it then), so the Python API and the `s2l` command run
# alike: idle OpenMP threads sleep instead of spinning. On a machine whose cores are busy with
# other work, spinning threads slowed the tiny proxy's training tenfold and more.
# OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# oneDNN, which runs torch's bf16 matrix products on a CPU, keeps every primitive it builds in
# two caches of 1,024 entries (its own and ideep's), one per operand shape. Length-grouped
# batches come in hundreds of shapes, so the caches grew by ~11 MB a training step and held
# ~2 GB by the end of the demo (whose live tensors are a few MB); 16 entries each kept it at
# 0.65 GB and were no slower (read when oneDNN first builds a primitive; set either to override).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "CheckpointCallback": "smalltolarge.proxy",
    "PRESETS": "smalltolarge.models",
    "EvalSettings": "smalltolarge.settings",
    "FinetuneSettings": "smalltolarge.settings",
    "Pool": "smalltolarge.data",
    "PrepareSettings": "smalltolarge.settings",
    "ProxySettings": "smalltolarge.settings",
    "RandomSelector": "smalltolarge.selection",
    "RunDir": "smalltolarge.runs",
    "RunResult": "smalltolarge.pipeline",
    "S2LError": "smalltolarge.errors",
    "S2LSelector": "smalltolarge.selection",
    "SELECTORS": "smalltolarge.selection",
    "ScoreSettings": "smalltolarge.settings",
    "SelectSettings": "smalltolarge.settings",
    "SelectionResult": "smalltolarge.subset",
    "Selector": "smalltolarge.selection",
    "Signals": "smalltolarge.selection",
    "Stratified": "smalltolarge.selection",
    "TokenisedPool": "smalltolarge.formatting",
    "Trajectories": "smalltolarge.trajectories",
    "TrajectoryCallback": "smalltolarge.recording",
    "TrajectoryRecorder": "smalltolarge.recording",
    "checkpoint_steps": "smalltolarge.training",
    "dedup_pool": "smalltolarge.dedup",
    "extend_run": "smalltolarge.extend",
    "find_duplicates": "smalltolarge.dedup",
    "format_prompt": "smalltolarge.formatting",
    "init_model": "smalltolarge.models",
    "list_checkpoints": "smalltolarge.proxy",
    "load_causal_lm": "smalltolarge.models",
    "load_pool": "smalltolarge.data",
    "load_run_trajectories": "smalltolarge.trajectories",
    "load_saved_pool": "smalltolarge.data",
    "load_tokenised": "smalltolarge.formatting",
    "load_tokenizer": "smalltolarge.models",
    "make_selector": "smalltolarge.selection",
    "prepare": "smalltolarge.prepare",
    "resolve_budget": "smalltolarge.selection",
    "response_losses": "smalltolarge.losses",
    "run_pipeline": "smalltolarge.pipeline",
    "save_pool": "smalltolarge.data",
    "score_model": "smalltolarge.losses",
    "score_trajectories": "smalltolarge.scoring",
    "select_subset": "smalltolarge.subset",
    "tokenise_pool": "smalltolarge.formatting",
    "train_proxy": "smalltolarge.proxy",
    "truncate_model": "smalltolarge.truncate",
    "write_subset": "smalltolarge.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'smalltolarge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
