"""smalltolarge: S2L (SmallToLarge) data selection for supervised fine-tuning.

Train a small proxy on the whole pool, record every example's loss at every checkpoint, cluster
the trajectories and sample a balanced subset for the large model. The stages, in order::

    from smalltolarge import prepare, train_proxy, score_trajectories, select_subset

    prepare("pool.jsonl", "runs/x", proxy="tiny")    # load + tokenise with the response mask
    train_proxy("runs/x", n_checkpoints=12)          # proxy/step-*/
    score_trajectories("runs/x")                     # trajectories/losses.npy (N x T) + ids
    result = select_subset("runs/x", method="s2l", budget=0.3, seed=0)

or all at once with :func:`run_pipeline`.
"""

from smalltolarge.data import Pool, load_pool, load_saved_pool, save_pool, write_subset
from smalltolarge.errors import S2LError
from smalltolarge.formatting import TokenisedPool, format_prompt, load_tokenised, tokenise_pool
from smalltolarge.models import PRESETS, load_causal_lm, load_tokenizer
from smalltolarge.pipeline import RunResult, run_pipeline
from smalltolarge.prepare import prepare
from smalltolarge.proxy import CheckpointCallback, list_checkpoints, train_proxy
from smalltolarge.runs import RunDir
from smalltolarge.scoring import (
    TrajectoryCallback,
    TrajectoryRecorder,
    checkpoint_steps,
    load_run_trajectories,
    response_losses,
    score_model,
    score_trajectories,
)
from smalltolarge.selection import (
    SELECTORS,
    RandomSelector,
    S2LSelector,
    Selector,
    Signals,
    Stratified,
    make_selector,
    resolve_budget,
)
from smalltolarge.subset import SelectionResult, select_subset
from smalltolarge.trajectories import Trajectories

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SELECTORS",
    "CheckpointCallback",
    "Pool",
    "RandomSelector",
    "RunDir",
    "RunResult",
    "S2LError",
    "S2LSelector",
    "SelectionResult",
    "Selector",
    "Signals",
    "Stratified",
    "TokenisedPool",
    "Trajectories",
    "TrajectoryCallback",
    "TrajectoryRecorder",
    "checkpoint_steps",
    "format_prompt",
    "list_checkpoints",
    "load_causal_lm",
    "load_pool",
    "load_run_trajectories",
    "load_saved_pool",
    "load_tokenised",
    "load_tokenizer",
    "make_selector",
    "prepare",
    "resolve_budget",
    "response_losses",
    "run_pipeline",
    "save_pool",
    "score_model",
    "score_trajectories",
    "select_subset",
    "tokenise_pool",
    "train_proxy",
    "write_subset",
]
