"""Write the evidence benchmark's eval set: 60 held-out items per source of the bundled pool.

The bundled ``demo_eval.jsonl`` holds 40 items per source (360); the evidence benchmark needs at
least 400 items, balanced over sources, to resolve a few points. This script draws a fresh set
from the same nine reasoning-gym generators and tiers as the bundled pool (through
``benchmarks/make_demo_pool.py``, so responses and answers are built the same way), from seeds
far from the pool's and the bundled eval's, and drops any question that is in either of them.

Usage (from the repository root)::

    .venv/bin/python benchmarks/evidence/make_eval.py [--out runs/benchmarks/evidence/eval.jsonl]

Deterministic: the same reasoning-gym version gives the same bytes. Takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import make_demo_pool as demo  # noqa: E402

PER_SOURCE = 60
SEED = demo.EVAL_SEED + 250_000_000  # far from the pool's and the bundled eval's seeds
DEFAULT_OUT = Path("runs/benchmarks/evidence/eval.jsonl")


def build() -> bytes:
    """The eval file's bytes: ``PER_SOURCE`` items per source, ids ``<source>-heldout-<k>``."""
    taken = {
        json.loads(line)["instruction"]
        for name in (demo.POOL_NAME, demo.EVAL_NAME)
        for line in (demo.DATA_DIR / name).read_text(encoding="utf-8").splitlines()
    }

    def per_tier(source: demo.Source, t_idx: int) -> int:
        n_tiers = len(source.tiers)
        return PER_SOURCE // n_tiers + (1 if t_idx < PER_SOURCE % n_tiers else 0)

    records = demo._make_split(SEED, per_tier, taken, "heldout-", Counter())
    assert len(records) == PER_SOURCE * len(demo.SOURCES), len(records)
    assert not {r["instruction"] for r in records} & taken
    return demo._to_bytes(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    data = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    n_items = data.count(b"\n")
    print(f"wrote {args.out}: {n_items} items, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
