"""Summarise the evidence benchmark for the README: paired differences to random, with what
each subset looks like (response length, source balance) beside them.

Reads only what the experiments wrote (results.csv, comparisons.csv, each selection's
summary.json) and prints Markdown.

Usage: .venv/bin/python benchmarks/evidence/analyse.py [runs/benchmarks/evidence/main ...]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from smalltolarge.compare import (
    comparisons,
    detectable_differences,
    paired_difference,
    read_item_values,
    run_name,
    verdict,
)
from smalltolarge.experiment import read_results

#: Pairs beyond "vs random" that say where a gain comes from: (method, baseline, budget).
EXTRA_PAIRS = (
    ("s2l-per-source", "random-balanced", "0.05"),
    ("s2l-reference", "random-balanced", "0.05"),
    ("s2l-reference", "s2l-per-source", "0.05"),
    ("s2l-whitened", "s2l", "0.05"),
    ("s2l-shape", "s2l", "0.05"),
)
SEEDS = (0, 1, 2)


def main(argv: list[str]) -> int:
    for out in [Path(a) for a in argv] or [Path("runs/benchmarks/evidence/main")]:
        print(f"### {out}\n")
        print(_table(out))
        print()
        print(_extra_pairs(out))
        print()
        labels = ("s2l", "s2l-per-source", "random-balanced", "s2l-reference")
        print(_per_source(out, labels, "0.05"))
        print()
        print(_per_source(out, ("s2l-per-source", "s2l-reference"), "0.05", "random-balanced"))
        print()
    return 0


def _table(out: Path) -> str:
    rows = read_results(out / "results.csv")
    macro: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "loss" and r["source"] == "macro":
            macro[(r["method"], r["budget"])].append(float(r["value"]))
    subsets: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for summary_path in sorted((out / "run" / "selections").glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        label, _, rest = summary_path.parent.name.rpartition("-seed")[0].rpartition("-")
        subsets[(label, rest)].append(summary)
    detectable = {r["budget"]: float(r["detectable"]) for r in detectable_differences(out)}
    lines = [
        "| method | budget | macro loss | vs random | 95% CI | verdict | vs full pool "
        "| response tokens (pool) | source TV to pool | PC1 / shape share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    diffs = {(r["method"], r["budget"], r["baseline"]): r for r in comparisons(out)}
    order = [k for k in macro if k[0] not in ("full-pool", "base")]
    order.sort(key=lambda k: (float(k[1]), k[0] != "random", k[0]))
    for label, budget in order:
        vs = diffs.get((label, budget, "random"))
        full = diffs.get((label, budget, "full-pool"))
        sums = subsets.get((label, budget), [])
        tokens = _mean([s["mean_response_tokens"]["subset"] for s in sums])
        pool_tokens = _mean([s["mean_response_tokens"]["pool"] for s in sums])
        tv = _mean([_tv(s["sources"]) for s in sums if s.get("sources")])
        diag = [s.get("diagnostics") or {} for s in sums]
        pc1 = _mean([d.get("pc1_share") for d in diag if d.get("pc1_share") is not None])
        shape = _mean([d.get("shape_share") for d in diag if d.get("shape_share") is not None])
        lines.append(
            f"| {label} | {budget} | {np.mean(macro[(label, budget)]):.3f} "
            f"({len(macro[(label, budget)])} seeds) | "
            + (
                f"{float(vs['difference']):+.3f} | [{float(vs['ci_low']):+.3f}, "
                f"{float(vs['ci_high']):+.3f}] | {vs['verdict']} | "
                if vs and label != "random"
                else f"— | detectable ±{detectable.get(budget, float('nan')):.3f} | — | "
            )
            + (f"{float(full['difference']):+.3f} | " if full else "— | ")
            + f"{tokens:.1f} ({pool_tokens:.1f}) | {tv:.3f} | {pc1:.3f} / {shape:.3f} |"
        )
    for key in (("full-pool", "all"), ("base", "—")):
        for (label, budget), values in macro.items():
            if label == key[0]:
                lines.append(f"| {label} | {budget} | {np.mean(values):.3f} | | | | | | | |")
    return "\n".join(lines)


def _item_matrix(out: Path, label: str, budget: str) -> tuple[list[str], np.ndarray] | None:
    """Item ids and a ``(seeds, items)`` matrix of per-item losses of one label and budget."""
    runs = [read_item_values(out / "eval" / run_name(label, budget, s), "loss") for s in SEEDS]
    if any(r is None for r in runs):
        return None
    ids = sorted(set.intersection(*(set(r) for r in runs)))
    return ids, np.array([[r[i] for i in ids] for r in runs])


def _extra_pairs(out: Path) -> str:
    lines = [
        "| method | vs | budget | difference | 95% CI | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for method, baseline, budget in EXTRA_PAIRS:
        a, b = _item_matrix(out, method, budget), _item_matrix(out, baseline, budget)
        if a is None or b is None or a[0] != b[0]:
            continue
        d = paired_difference(a[1], b[1])
        lines.append(
            f"| {method} | {baseline} | {budget} | {d.mean:+.3f} | [{d.ci_low:+.3f}, "
            f"{d.ci_high:+.3f}] | {verdict(d, lower_is_better=True)} |"
        )
    return "\n".join(lines)


def _per_source(out: Path, labels: tuple[str, ...], budget: str, baseline: str = "random") -> str:
    """Per-source paired difference to ``baseline`` (loss, same items and seeds), one column
    per label that ran."""
    base = _item_matrix(out, baseline, budget)
    labels = tuple(label for label in labels if _item_matrix(out, label, budget) is not None)
    if base is None or not labels:
        return ""
    ids, base_values = base
    source = [i.rsplit("-heldout-", 1)[0] for i in ids]
    names = sorted(set(source))
    lines = [
        f"Per source, budget {budget}: difference to {baseline} in held-out loss (95% CI).",
        "",
        "| source | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    cells = {name: [] for name in names}
    for label in labels:
        other = _item_matrix(out, label, budget)
        for name in names:
            if other is None or other[0] != ids:
                cells[name].append("—")
                continue
            cols = [k for k, s in enumerate(source) if s == name]
            d = paired_difference(other[1][:, cols], base_values[:, cols])
            cells[name].append(f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]")
    lines += [f"| {name} | " + " | ".join(cells[name]) + " |" for name in names]
    return "\n".join(lines)


def _tv(sources: list[dict]) -> float:
    """Total-variation distance between the subset's and the pool's source mix."""
    pool = np.array([s["pool"] for s in sources], dtype=float)
    sub = np.array([s["subset"] for s in sources], dtype=float)
    return float(0.5 * np.abs(pool / pool.sum() - sub / max(sub.sum(), 1)).sum())


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
