"""Issue 24's verdicts: every method against per-source random on the pretrained target tier.

Reads what h2h.sh's experiments wrote (per-item held-out losses under each out_dir's ``eval/``,
``results.csv`` for the wall times, the selections' ``summary.json`` for the proxies'
diagnostics) and prints Markdown: per pool, the detectable difference (per-source random
against itself, seeds resampled), each method's paired difference to per-source random with its
95% interval and verdict, the per-seed values and times, the per-source differences, and each
proxy's fit to the target and trajectory diagnostics.

Usage: .venv/bin/python benchmarks/evidence/analyse_h2h.py [--out-root runs/benchmarks/evidence]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from smalltolarge.compare import (
    detectable_difference,
    paired_difference,
    read_item_values,
    run_name,
    verdict,
)
from smalltolarge.experiment import read_results

BASELINE = "random-balanced"
BUDGET = "0.05"
SEEDS = tuple(range(8))
#: pool -> (title, experiment out_dirs (relative to the root) holding its runs)
POOLS = {
    "a": ("pool A: the bundled pool (9 sources, 2,900 examples; 360 eval items)",
          ("h2h-a-tiny", "h2h-a-k4", "h2h-a-k4-b")),
    "b": ("pool B: make_pool_b.py (10 other sources, 3,000 examples; 400 eval items)",
          ("h2h-b-tiny", "h2h-b-k4", "h2h-b-k4-b")),
}  # fmt: skip
#: method label -> what it is (proxy in brackets)
METHODS = {
    "s2l-per-source": "S2L per source [tiny, from scratch]",
    "s2l-per-source-k4": "S2L per source [SmolLM2 cut to 4 layers]",
    "s2l-checked": "target-checked cluster budgets [k4]",
    "s2l-cut": "never-learned tail cut, then S2L [k4]",
    "kmq": "budgets by cluster size, quality-weighted draws [k4]",
}
#: the proxy run of each experiment kind, for its diagnostics
PROXIES = {"tiny": "tiny, from scratch (3 epochs, 12 checkpoints)",
           "k4": "SmolLM2-135M cut to 4 layers, pretrained (1 epoch, 4 checkpoints)"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-root", type=Path, default=Path("runs/benchmarks/evidence"))
    args = parser.parse_args(argv)
    print("# Issue 24: the head-to-head on the pretrained target tier\n")
    print(
        "Target SmolLM2-135M-Instruct, full fine-tuning, 1 epoch, lr 1e-4, batch 8, at 5% of "
        "the pool; metric: held-out response loss (nats/token, lower is better), paired by "
        "item and seed against per-source random (random-balanced), 95% bootstrap interval "
        "over items and seeds. Produced by `OMP_NUM_THREADS=1 bash benchmarks/evidence/h2h.sh` "
        "(this table: `python benchmarks/evidence/analyse_h2h.py`).\n"
    )
    for title, dirs in POOLS.values():
        print(f"## {title}\n")
        print(pool_section(args.out_root, [args.out_root / d for d in dirs]))
    return 0


def pool_section(root: Path, dirs: list[Path]) -> str:
    values, times = load_runs([d for d in dirs if d.is_dir()])
    lines = []
    base = values.get(BASELINE, {})
    if len(base) < 2:
        return "per-source random has fewer than two seeds yet: nothing to compare.\n"
    base_seeds = sorted(base)
    items = common_items([base[s] for s in base_seeds])
    base_matrix = np.array([[base[s][i] for i in items] for s in base_seeds])
    detect = detectable_difference(base_matrix)
    lines.append(
        f"Per-source random: {base_matrix.mean():.4f} (seed spread sd "
        f"{base_matrix.mean(axis=1).std(ddof=1):.4f}, {len(base_seeds)} seeds); detectable "
        f"difference ±{detect:.4f} nats ({len(base_seeds)} seeds x {len(items)} items).\n"
    )
    if "base" in values:
        untrained = np.mean([values["base"][s][i] for s in values["base"] for i in items])
        lines.append(f"Untrained target: {untrained:.4f}.\n")
    lines.append(
        "| method | seeds | mean | vs per-source random [95% CI] | verdict | seed values | "
        "train s / eval s (mean) |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    per_source_rows = []
    for label, what in METHODS.items():
        runs = values.get(label, {})
        seeds = sorted(set(runs) & set(base))
        if not seeds:
            continue
        shared = common_items([runs[s] for s in seeds] + [base[s] for s in seeds])
        a = np.array([[runs[s][i] for i in shared] for s in seeds])
        b = np.array([[base[s][i] for i in shared] for s in seeds])
        diff = paired_difference(a, b)
        word = verdict(diff, lower_is_better=True)
        per_seed = " / ".join(f"{v:.3f}" for v in a.mean(axis=1))
        t = times.get(label, {})
        train = np.mean([t[s][0] for s in seeds if s in t]) if t else float("nan")
        evals = np.mean([t[s][1] for s in seeds if s in t]) if t else float("nan")
        lines.append(
            f"| {label}: {what} | {len(seeds)} | {a.mean():.4f} | {diff.mean:+.4f} "
            f"[{diff.ci_low:+.4f}, {diff.ci_high:+.4f}] | **{word}** | {per_seed} | "
            f"{train:.0f} / {evals:.0f} |"
        )
        per_source_rows.append((label, seeds, shared))
    lines.append("")
    lines.append(
        f"Per-source random's seeds: {' / '.join(f'{v:.3f}' for v in base_matrix.mean(axis=1))}.\n"
    )
    lines.append(per_source_table(values, per_source_rows, root, dirs))
    lines.append(proxy_section(dirs))
    return "\n".join(lines) + "\n"


def load_runs(dirs: list[Path]):
    """``values[label][seed] = {item: loss}`` and ``times[label][seed] = (train s, eval s)``
    over every out_dir (the first one holding a run wins)."""
    values: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    times: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for out in dirs:
        for row in read_results(out / "results.csv"):
            if row["source"] != "all" or row["metric"] != "loss":
                continue
            method = row["method"]
            if method != "base" and row["budget"] != BUDGET:
                continue
            seed = int(row["seed"]) if row["seed"] not in ("", None) else 0
            if seed in values[method]:
                continue
            name = run_name(method, row["budget"], row["seed"])
            loaded = read_item_values(out / "eval" / name, "loss")
            if loaded is None:
                continue
            values[method][seed] = loaded
            times[method][seed] = (float(row["train_seconds"]), float(row["eval_seconds"]))
    return values, times


def common_items(runs: list[dict[str, float]]) -> list[str]:
    shared = set(runs[0])
    for run in runs[1:]:
        shared &= set(run)
    return sorted(shared)


def per_source_table(values, rows, root: Path, dirs: list[Path]) -> str:
    """Each method's difference to per-source random within each eval source."""
    sources = item_sources(dirs)
    if not sources or not rows:
        return ""
    names = sorted(set(sources.values()))
    out = ["Per eval source, difference to per-source random (mean over seeds and items; "
           "* where the 95% interval excludes 0):\n",
           "| method | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names)]  # fmt: skip
    base = values[BASELINE]
    for label, seeds, shared in rows:
        cells = []
        for name in names:
            its = [i for i in shared if sources.get(i) == name]
            a = np.array([[values[label][s][i] for i in its] for s in seeds])
            b = np.array([[base[s][i] for i in its] for s in seeds])
            d = paired_difference(a, b, resamples=400)
            mark = "*" if d.ci_low > 0 or d.ci_high < 0 else ""
            cells.append(f"{d.mean:+.3f}{mark}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def item_sources(dirs: list[Path]) -> dict[str, str]:
    for out in dirs:
        for path in sorted((out / "eval").glob("*/losses.jsonl")) if out.is_dir() else []:
            with open(path, encoding="utf-8") as f:
                return {r["id"]: r["source"] for r in map(json.loads, f) if r}
    return {}


def proxy_section(dirs: list[Path]) -> str:
    """Each proxy's fit to the target (from a probed selection's summary) and the trajectory
    diagnostics of its per-source S2L selection."""
    out = ["Proxies (from the seed-0 selections' summaries):\n"]
    for d in dirs:
        kind = "k4" if "k4" in d.name else "tiny"
        if d.name.endswith("-b") or not d.is_dir():
            continue
        label = "s2l-per-source" + ("-k4" if kind == "k4" else "")
        summary_path = d / "run" / "selections" / f"{label}-{BUDGET}-seed0" / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        diag = summary.get("diagnostics", {})
        fit = summary.get("proxy_fit")
        parts = [f"- **{PROXIES[kind]}**:"]
        if fit:
            parts.append(
                f"fit to the target over {fit['n_probed']} probed examples: Spearman "
                f"{fit['spearman']:+.2f} (Pearson {fit['pearson']:+.2f}), within sources mean "
                f"{fit.get('within_source_mean', float('nan')):+.2f}, negative in "
                f"{fit.get('sources_negative', 0)} of {len(fit.get('per_source', {}))} sources;"
            )
        else:
            parts.append("no probe in this run (no fit reported);")
        keys = ("pc1_share", "shape_share", "pc1_final_correlation", "nmi_source")
        shown = {k: diag[k] for k in keys if k in diag}
        parts.append(f"diagnostics {json.dumps(shown) if shown else json.dumps(diag)[:300]}")
        out.append(" ".join(parts))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
