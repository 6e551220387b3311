"""The demo: the whole S2L chain on the bundled multi-source math pool, on a CPU.

The bundled pool (``smalltolarge/bundled/demo_pool.jsonl``) mixes several reasoning-gym
generators of uneven size, a small analogue of MathInstruct's many sources; it was generated
with a fixed seed by ``benchmarks/make_demo_pool.py``. The demo trains the ``tiny`` proxy on all
of it, scores every example at each checkpoint and selects 30% with S2L.
"""

from __future__ import annotations

import os

from smalltolarge.demo_data import DEMO_POOL
from smalltolarge.pipeline import RunResult, run_pipeline
from smalltolarge.settings import SelectSettings

#: Settings of the demo: the reference recipe (3 epochs, cosine, warm-up), shrunk to a CPU.
DEMO_SETTINGS = {
    "proxy": "tiny",
    "max_length": 256,
    "epochs": 3.0,
    "n_checkpoints": 12,
    "method": "s2l",  # with S2L's default K = 100
}


def run_demo(
    run_dir: str | os.PathLike = "runs/demo",
    *,
    budget: float | int | str = SelectSettings.budget,
    seed: int = SelectSettings.seed,
    progress: bool = True,
) -> RunResult:
    """Run prepare -> train proxy -> score -> select on the bundled pool in ``run_dir``."""
    return run_pipeline(
        DEMO_POOL, run_dir, budget=budget, seed=seed, progress=progress, **DEMO_SETTINGS
    )
