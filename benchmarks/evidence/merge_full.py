"""Merge the full-pool and untrained-target runs of full.yaml into main.yaml's results.

They run as an experiment of their own so that they can use the other core; the paired
comparisons of main/ need them in its results.csv and eval/ directory. Idempotent.

Usage: .venv/bin/python benchmarks/evidence/merge_full.py [EVIDENCE_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from smalltolarge.experiment import read_results, write_results


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "runs/benchmarks/evidence")
    full, main_dir = root / "full", root / "main"
    rows = read_results(main_dir / "results.csv")
    extra = [r for r in read_results(full / "results.csv") if r["method"] in ("full-pool", "base")]
    keep = [r for r in rows if r["method"] not in ("full-pool", "base")]
    write_results(main_dir / "results.csv", keep + extra)
    for run in (full / "eval").iterdir():
        target = main_dir / "eval" / run.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run, target)
    print(f"merged {len(extra)} rows of {full} into {main_dir / 'results.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
