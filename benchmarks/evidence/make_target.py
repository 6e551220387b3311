"""The targeted-selection benchmark's target set: the bundled eval set's items of one source.

They share no question with the pool (the bundled eval set is held out from it) nor with the
evidence eval set (make_eval.py draws fresh items and checks both), so the target set is never
trained on and never scored as an eval item.

    .venv/bin/python benchmarks/evidence/make_target.py --source gsm_symbolic \\
        --out runs/benchmarks/evidence/target-gsm_symbolic.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smalltolarge.demo_data import DEMO_EVAL
from smalltolarge.runs import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="gsm_symbolic")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in DEMO_EVAL.read_text(encoding="utf-8").splitlines()]
    chosen = [r for r in rows if r["source"] == args.source]
    if not chosen:
        raise SystemExit(f"no item of source {args.source!r} in {DEMO_EVAL}")
    atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in chosen))
    print(f"{len(chosen)} {args.source} items -> {args.out}")


if __name__ == "__main__":
    main()
