"""Time and memory of S2L selection at scale: pick 1,000,000 of 10,000,000 x 12 trajectories.

Run from the repository root::

    .venv/bin/python benchmarks/select_scale.py                    # full size, temp dir
    .venv/bin/python benchmarks/select_scale.py --workdir /data/b   # keep/reuse the matrix
    .venv/bin/python benchmarks/select_scale.py --n 1000000 --budget 100000   # quick look

Step 1 writes a synthetic float32 trajectory matrix chunk by chunk into a ``.npy`` file
(decreasing loss curves from a few latent groups, with per-example scale and noise). Step 2
runs in a fresh subprocess, so that generating the matrix does not count towards its memory:
it opens the file with ``np.load(mmap_mode="r")``, builds the :class:`Signals`, and times
``S2LSelector(n_clusters=k).select(...)`` alone. Peak RSS is that subprocess's
``ru_maxrss`` (it includes the pages of the memory map it touched).

The last line printed is one JSON object::

    {"n": ..., "t": ..., "k": ..., "budget": ..., "seconds": ..., "peak_rss_bytes": ...,
     "matrix_bytes": ...}

Targets: ``seconds <= 60`` on 2 cores and ``peak_rss_bytes <= 2 * matrix_bytes``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_GEN_CHUNK_ROWS = 1_000_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="examples (rows)")
    parser.add_argument("--t", type=int, default=12, help="checkpoints (columns)")
    parser.add_argument("--k", type=int, default=100, help="k-means clusters")
    parser.add_argument("--budget", type=int, default=1_000_000, help="examples to select")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the .npy goes")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.k, args.budget, args.seed)))
        return

    with tempfile.TemporaryDirectory(prefix="s2l-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"trajectories_{args.n}x{args.t}_seed{args.seed}.npy"
        if not _matches(path, args.n, args.t):
            started = time.perf_counter()
            generate(path, args.n, args.t, args.seed)
            print(f"generated {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        # A fresh interpreter, so that peak RSS reflects the selection only.
        child = [sys.executable, __file__, "--measure", str(path)]
        child += ["--k", str(args.k), "--budget", str(args.budget), "--seed", str(args.seed)]
        result = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True)
    print(result.stdout.strip().splitlines()[-1])


def generate(path: Path, n: int, t: int, seed: int) -> None:
    """Write a synthetic ``(n, t)`` float32 trajectory matrix to ``path``, chunk by chunk.

    Each example follows one of a few latent curves ``floor + (start - floor) * exp(-rate *
    step)`` (some groups are learned fast, some slowly, one is forgotten again late in
    training), scaled per example by a log-normal factor, plus per-checkpoint noise.
    """
    rng = np.random.default_rng(seed)
    steps = np.linspace(0.0, 1.0, t, dtype=np.float32)
    # (start, floor, rate, late bump) of each latent group, and how common the group is.
    groups = np.array(
        [
            [2.5, 0.4, 6.0, 0.0],
            [2.0, 1.2, 2.0, 0.0],
            [3.5, 0.1, 10.0, 0.0],
            [1.5, 1.3, 0.5, 0.0],
            [2.8, 0.6, 4.0, 0.8],
            [4.0, 2.5, 1.0, 0.0],
        ],
        dtype=np.float32,
    )
    weights = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
    start, floor, rate, bump = groups.T
    curves = floor[:, None] + (start - floor)[:, None] * np.exp(-rate[:, None] * steps)
    curves += bump[:, None] * np.clip(steps - 0.7, 0.0, None)[None, :] / 0.3
    curves = curves.astype(np.float32)

    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), "w+", np.float32, (n, t))
    for lo in range(0, n, _GEN_CHUNK_ROWS):
        m = min(_GEN_CHUNK_ROWS, n - lo)
        group = rng.choice(len(groups), size=m, p=weights)
        scale = rng.lognormal(0.0, 0.25, size=(m, 1)).astype(np.float32)
        noise = rng.normal(0.0, 0.08, size=(m, t)).astype(np.float32)
        out[lo : lo + m] = np.clip(curves[group] * scale + noise * scale, 0.0, None)
    out.flush()
    del out
    path.with_suffix(".tmp.npy").replace(path)


def measure(path: Path, k: int, budget: int, seed: int) -> dict:
    """Select ``budget`` rows of the memory-mapped matrix at ``path`` with S2L; time and RSS."""
    from smalltolarge.selection import S2LSelector, Signals

    losses = np.load(path, mmap_mode="r")
    n, t = losses.shape
    started = time.perf_counter()
    signals = Signals(losses=losses, ids=np.arange(n))
    validated = time.perf_counter()
    selector = S2LSelector(n_clusters=k)
    rows = selector.select(signals, budget, seed)
    seconds = time.perf_counter() - validated
    assert len(rows) == budget and np.all(np.diff(rows) > 0)
    print(
        f"validation {validated - started:.2f} s; selection {seconds:.2f} s; "
        f"cluster sizes {selector.cluster_sizes_.min()}..{selector.cluster_sizes_.max()}, "
        f"taken {selector.cluster_taken_.min()}..{selector.cluster_taken_.max()}",
        file=sys.stderr,
    )
    return {
        "n": int(n),
        "t": int(t),
        "k": int(k),
        "budget": int(budget),
        "seconds": round(seconds, 3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "matrix_bytes": int(losses.nbytes),
    }


def _matches(path: Path, n: int, t: int) -> bool:
    """Whether ``path`` already holds an ``(n, t)`` float32 matrix (so it can be reused)."""
    if not path.exists():
        return False
    existing = np.load(path, mmap_mode="r")
    return existing.shape == (n, t) and existing.dtype == np.float32


if __name__ == "__main__":
    main()
