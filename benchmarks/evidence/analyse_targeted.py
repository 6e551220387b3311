"""Targeted selection on the evidence benchmark: paired differences on the target source's
held-out items and on all items, and how much of the target source each subset holds.

Reads what `s2l experiment benchmarks/evidence/targeted.yaml` wrote; prints Markdown.

    .venv/bin/python benchmarks/evidence/analyse_targeted.py [runs/benchmarks/evidence/targeted]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from smalltolarge.compare import paired_difference, read_item_values, run_name, verdict

SOURCE = "gsm_symbolic"
METHODS = ("s2l", "s2l-targeted", "s2l-targeted-full")
BUDGET, SEEDS = "0.05", (0, 1, 2)


def _values(out: Path, method: str, items: list[str]) -> np.ndarray:
    rows = []
    for seed in SEEDS:
        values = read_item_values(out / "eval" / run_name(method, BUDGET, seed), "loss")
        rows.append([values[i] for i in items])
    return np.asarray(rows)


def _share(out: Path, method: str) -> str:
    taken = []
    for seed in SEEDS:
        summary = json.loads(
            (
                out / "run" / "selections" / run_name(method, BUDGET, seed) / "summary.json"
            ).read_text(encoding="utf-8")
        )
        sources = {s["source"]: s["subset"] for s in summary["sources"]}
        taken.append(sources.get(SOURCE, 0) / summary["n_selected"])
    return f"{100 * np.mean(taken):.0f}%"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("runs/benchmarks/evidence/targeted")
    first = out / "eval" / run_name("random", BUDGET, 0) / "losses.jsonl"
    rows = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    scopes = {
        f"{SOURCE} items": [r["id"] for r in rows if r["source"] == SOURCE],
        "all items": [r["id"] for r in rows],
    }
    print(f"Budget {BUDGET}, seeds {list(SEEDS)}; held-out loss, paired over items and seeds.\n")
    print(f"| method | {SOURCE} in subset | scope | loss | vs | difference | 95% CI | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    random_share = _share(out, "random")
    for scope, items in scopes.items():
        base = _values(out, "random", items)
        print(f"| random | {random_share} | {scope} | {base.mean():.3f} | - | - | - | - |")
        for method in METHODS:
            mine = _values(out, method, items)
            for vs, other in (("random", base), ("s2l", _values(out, "s2l", items))):
                if method == vs:
                    continue
                d = paired_difference(mine, other)
                print(
                    f"| {method} | {_share(out, method)} | {scope} | {mine.mean():.3f} | {vs} "
                    f"| {d.mean:+.3f} | [{d.ci_low:+.3f}, {d.ci_high:+.3f}] "
                    f"| {verdict(d, lower_is_better=True)} |"
                )
    print(f"\nProduced by `.venv/bin/python benchmarks/evidence/analyse_targeted.py {out}`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
