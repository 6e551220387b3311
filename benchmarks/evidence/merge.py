"""Merge the runs of experiments made with the same data and settings (the parts of
run_part.py; full.yaml's full-pool and untrained runs into main/) into the first out_dir:
results.csv rows (a run in several parts: the first part's rows), eval/ directories and the
method entries of experiment.json. Idempotent. Then `s2l experiment CONFIG` in that out_dir
skips every run and re-makes the tables and comparisons.

Usage: .venv/bin/python benchmarks/evidence/merge.py INTO_DIR PART_DIR [PART_DIR ...]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from smalltolarge.experiment import read_results, write_results
from smalltolarge.runs import atomic_write_json


def merge(into: Path, parts: list[Path]) -> int:
    """Merge ``parts`` into ``into``; return the number of rows added."""
    rows = read_results(into / "results.csv")
    seen = {(r["method"], r["budget"], r["seed"]) for r in rows}
    meta_path = into / "experiment.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    added = 0
    for part in parts:
        part_meta = json.loads((part / "experiment.json").read_text())
        if meta is None:
            meta = part_meta
        elif part_meta["fingerprint"] != meta["fingerprint"]:
            raise SystemExit(f"{part} was run with other data or settings than {into}")
        meta["methods"] = {**part_meta["methods"], **meta["methods"]}
        new = [r for r in read_results(part / "results.csv")
               if (r["method"], r["budget"], r["seed"]) not in seen]  # fmt: skip
        keys = {(r["method"], r["budget"], r["seed"]) for r in new}
        for run_dir in (part / "eval").iterdir():
            target = into / "eval" / run_dir.name
            if not target.exists():
                shutil.copytree(run_dir, target)
        rows += new
        seen |= keys
        added += len(new)
    write_results(into / "results.csv", rows)
    atomic_write_json(meta_path, meta)
    return added


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    into, parts = Path(argv[0]), [Path(p) for p in argv[1:]]
    print(f"merged {merge(into, parts)} rows of {', '.join(map(str, parts))} into {into}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
