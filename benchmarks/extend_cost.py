"""What extending a run costs, against scoring the grown pool again from the start.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/extend_cost.py            # 600 + 100 examples
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/extend_cost.py --n-base 1200 --n-new 200

It prepares a run on the first ``--n-base`` examples of the bundled demo pool, trains the tiny
proxy (keeping its ``--checkpoints`` checkpoints, trajectories recorded in training), makes an
S2L selection, then times on a copy of that run:

- ``extend``: :func:`smalltolarge.extend.extend_run` with the next ``--n-new`` examples (load,
  tokenise, score at every checkpoint, write the grown artifacts, redo the selection), and the
  scoring part of it alone (``extend_scoring_s``);
- ``rescore``: the same loss kernel (:func:`smalltolarge.losses.score_model`, same precision and
  batching) over all ``n_base + n_new`` examples of the grown run at every checkpoint: what
  growing a pool costs without ``extend`` (``s2l score`` itself refuses the grown run, whose
  proxy was trained on the smaller pool).

It checks that the grown run's trajectories equal the full re-scoring (to float32 rounding,
since batches differ) and prints one JSON object. The figures depend on the machine and on what
else runs on it: quote them with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-base", type=int, default=600)
    parser.add_argument("--n-new", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    import torch

    from smalltolarge.demo_data import DEMO_POOL
    from smalltolarge.extend import extend_run
    from smalltolarge.formatting import TokenArrays, load_tokenised
    from smalltolarge.losses import score_model
    from smalltolarge.models import load_causal_lm
    from smalltolarge.prepare import prepare
    from smalltolarge.proxy import train_proxy
    from smalltolarge.runs import RunDir, list_checkpoints
    from smalltolarge.subset import select_subset
    from smalltolarge.trajectories import Trajectories

    lines = Path(DEMO_POOL).read_text(encoding="utf-8").splitlines(keepends=True)
    work = Path(tempfile.mkdtemp(prefix="s2l-extend-cost-"))
    try:
        base_file, new_file = work / "base.jsonl", work / "new.jsonl"
        base_file.write_text("".join(lines[: args.n_base]), encoding="utf-8")
        new_file.write_text("".join(lines[args.n_base : args.n_base + args.n_new]), "utf-8")
        run = RunDir(work / "run")
        prepare(base_file, run, proxy="tiny", max_length=args.max_length, progress=False)
        train_proxy(run, epochs=1, n_checkpoints=args.checkpoints, precision="fp32", progress=False)
        select_subset(run, budget=0.3, seed=0, n_clusters=10, name="s2l")

        start = time.perf_counter()
        result = extend_run(run, new_file, progress=False)
        extend_s = time.perf_counter() - start
        grown = Trajectories.load(run.trajectories_dir, mmap=False)

        arrays = TokenArrays.from_dataset(load_tokenised(run).dataset)
        start = time.perf_counter()
        rescored = np.column_stack(
            [
                score_model(load_causal_lm(path), arrays)
                for _, path in list_checkpoints(run.proxy_dir)
            ]
        )
        rescore_s = time.perf_counter() - start
        diff = float(np.abs(rescored - grown.losses).max())
        report = {
            "n_base": args.n_base,
            "n_new": args.n_new,
            "n_new_scored": result.n_scored,
            "checkpoints": len(result.steps),
            "threads": torch.get_num_threads(),
            "extend_s": round(extend_s, 2),
            "extend_scoring_s": round(result.seconds_scoring, 2),
            "extend_forward_rows": result.forward_rows,
            "rescore_s": round(rescore_s, 2),
            "rescore_forward_rows": int(rescored.size),
            "rescore_over_extend": round(rescore_s / extend_s, 2),
            "max_abs_diff_vs_rescore": diff,
        }
        print(json.dumps(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
