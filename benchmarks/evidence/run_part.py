"""Run part of an experiment config in an out_dir of its own, so that two cores can share one
experiment (each `s2l experiment` process runs its runs one after another); merge.py puts the
parts back into one out_dir. The part keeps the config's data, proxy, target and evaluation
settings, so its rows are the same experiment's; only the methods x budgets are filtered.

The proxy run (RUN/) is copied from --proxy-run when the part has none, so that every part
selects from the same trajectories without training the proxy again.

Usage:
  .venv/bin/python benchmarks/evidence/run_part.py CONFIG --out-dir DIR \
      --runs random@0.05,s2l@0.05 [--seeds 0,1] [--base] \
      [--proxy-run runs/benchmarks/evidence/main/run]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from smalltolarge.experiment import run_experiment


def part_config(
    config: Path,
    out_dir: Path,
    runs: set[tuple[str, float]],
    base: bool,
    seeds: list[int] | None = None,
) -> dict:
    """The config dict of one part: ``config`` with only the (label, budget) pairs in ``runs``
    (and only ``seeds``, when given)."""
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    for key in ("pool", "eval"):  # a dict config resolves paths against the cwd, not the file
        if not str(cfg[key]).startswith("bundled:"):
            cfg[key] = str((config.parent / cfg[key]).resolve())
    methods = []
    for spec in cfg["methods"]:
        label = spec.get("label", spec["method"])
        budgets = [b for b in spec["budgets"] if (label, float(b)) in runs]
        if budgets:
            kept = [s for s in spec["seeds"] if seeds is None or s in seeds]
            methods.append({**spec, "budgets": budgets, "seeds": kept})
    found = {(m.get("label", m["method"]), float(b)) for m in methods for b in m["budgets"]}
    if missing := runs - found:
        raise SystemExit(f"{config}: no method entry for {sorted(missing)}")
    cfg.update(out_dir=str(out_dir), methods=methods, evaluate_base=base, full_pool=False)
    return cfg


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--runs", required=True, help="LABEL@BUDGET,... (e.g. random@0.05)")
    parser.add_argument("--seeds", help="only these seeds (e.g. 1,2); default: the config's")
    parser.add_argument("--base", action="store_true", help="also evaluate the untrained target")
    parser.add_argument("--proxy-run", type=Path, help="copy this proxy run when DIR has none")
    args = parser.parse_args(argv)
    runs = set()
    for item in args.runs.split(","):
        label, _, budget = item.partition("@")
        runs.add((label, float(budget)))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    cfg = part_config(args.config, args.out_dir, runs, args.base, seeds)
    if args.proxy_run and not (args.out_dir / "run").exists():
        args.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(args.proxy_run, args.out_dir / "run.tmp", dirs_exist_ok=True)
        (args.out_dir / "run.tmp").rename(args.out_dir / "run")
    run_experiment(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
