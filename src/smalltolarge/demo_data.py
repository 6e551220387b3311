"""The bundled demo data: a small multi-source math SFT pool and a held-out eval set.

Both files are JSON Lines in the Alpaca schema (``id``, ``instruction``, ``input``, ``output``)
plus ``source``, ``answer`` and ``difficulty``. They are generated from reasoning-gym
(Apache-2.0) procedural generators by ``benchmarks/make_demo_pool.py``, which documents the
sources, seeds and caveats (the ``gsm_symbolic`` items are variants of GSM8K *test* questions).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

__all__ = ["DEMO_EVAL", "DEMO_POOL", "describe_demo_pool"]


def _data_file(name: str) -> Path:
    ref = resources.files("smalltolarge") / "bundled" / name
    if isinstance(ref, os.PathLike):
        return Path(os.fspath(ref))
    # Not on the filesystem (e.g. a zipped install): fall back to the module's directory.
    return Path(__file__).resolve().parent / "bundled" / name


DEMO_POOL: Path = _data_file("demo_pool.jsonl")
DEMO_EVAL: Path = _data_file("demo_eval.jsonl")


def describe_demo_pool(path: str | os.PathLike[str] = DEMO_POOL) -> dict:
    """Summarise a demo JSONL file (the pool by default) by reading it.

    Returns ``{"path", "n_examples", "sources": {source: {"count", "mean_instruction_chars",
    "mean_output_chars"}}}`` with sources sorted by count (largest first), then name.
    """
    totals: dict[str, list[int]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            entry = totals.setdefault(record["source"], [0, 0, 0])
            entry[0] += 1
            entry[1] += len(record["instruction"])
            entry[2] += len(record["output"])
    return {
        "path": str(path),
        "n_examples": sum(count for count, _, _ in totals.values()),
        "sources": {
            source: {
                "count": count,
                "mean_instruction_chars": instr / count,
                "mean_output_chars": output / count,
            }
            for source, (count, instr, output) in sorted(
                totals.items(), key=lambda kv: (-kv[1][0], kv[0])
            )
        },
    }
