"""Write the evidence benchmark's SECOND pool and its eval set (issue 24: one pool is an anecdote).

Ten reasoning-gym generators, none of them a source of the bundled pool, of uneven size
(150 to 500), short plain answers (string, format and arithmetic tasks: a different mix of
response styles from the bundled pool's worked solutions), 3,000 examples; and 40 held-out items
per source (400), none sharing a question with the pool. Chosen before any method ran on it; the
sizes were set by hand to be uneven, not tuned to anything.

Usage (from the repository root)::

    .venv/bin/python benchmarks/evidence/make_pool_b.py [--out-dir runs/benchmarks/evidence/pool-b]

writes ``pool.jsonl`` and ``eval.jsonl`` there (Alpaca schema with ``id`` and ``source``, as the
bundled pool). Deterministic for reasoning-gym 0.1.25; a few seconds.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

SOURCES: dict[str, int] = {
    "base_conversion": 500,
    "spell_backward": 400,
    "products": 350,
    "lcm": 300,
    "letter_counting": 300,
    "decimal_chain_sum": 300,
    "count_bits": 250,
    "caesar_cipher": 250,
    "sentence_reordering": 200,
    "family_relationships": 150,
}
EVAL_PER_SOURCE = 40
POOL_SEED = 31_415_000
EVAL_SEED = POOL_SEED + 700_000_000
SOURCE_STRIDE = 1_000_000
DRAW = 20_000  # items drawn per (split, source) at most
DEFAULT_OUT = Path("runs/benchmarks/evidence/pool-b")


def _split(seed: int, sizes: dict[str, int], exclude: set[str], infix: str) -> list[dict]:
    import reasoning_gym

    records = []
    seen = set(exclude)
    for s_idx, (name, want) in enumerate(sizes.items()):
        dataset = reasoning_gym.create_dataset(name, size=DRAW, seed=seed + s_idx * SOURCE_STRIDE)
        k = 0
        for idx in range(DRAW):
            if k == want:
                break
            item = dataset[idx]
            question, answer = item["question"], str(item["answer"])
            if question in seen or not answer.strip():
                continue
            seen.add(question)
            records.append(
                {
                    "id": f"{name}-{infix}{k}",
                    "instruction": question,
                    "input": "",
                    "output": answer,
                    "source": name,
                    "answer": answer,
                }
            )
            k += 1
        assert k == want, (name, k, want)
    return records


def build() -> tuple[list[dict], list[dict]]:
    pool = _split(POOL_SEED, SOURCES, set(), "")
    random.Random(POOL_SEED).shuffle(pool)
    questions = {r["instruction"] for r in pool}
    evals = _split(EVAL_SEED, dict.fromkeys(SOURCES, EVAL_PER_SOURCE), questions, "heldout-")
    assert not questions & {r["instruction"] for r in evals}
    return pool, evals


def _write(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    pool, evals = build()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _write(args.out_dir / "pool.jsonl", pool)
    _write(args.out_dir / "eval.jsonl", evals)
    counts = Counter(r["source"] for r in pool)
    print(f"wrote {args.out_dir}: pool {len(pool)} ({dict(counts)}), eval {len(evals)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
