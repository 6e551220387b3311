"""Human-readable reports of what a stage produced (rich tables on the terminal)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_selection_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print a selection's summary: per-source counts in pool vs subset, and cluster sizes."""
    console = console or Console()
    n_sel, n_pool = summary["n_selected"], summary["n_pool"]
    console.print(
        f"[bold]{summary.get('name', summary.get('method'))}[/bold]: selected {n_sel} of "
        f"{n_pool} examples ({100 * n_sel / n_pool:.1f}%), seed {summary['seed']}"
        + (f"; {summary['n_excluded']} excluded as too long" if summary.get("n_excluded") else "")
    )
    sources = summary.get("sources")
    if sources:
        table = Table(title="examples per source", title_justify="left")
        for col in ("source", "pool", "pool %", "subset", "subset %", "taken %"):
            table.add_column(col, justify="left" if col == "source" else "right")
        tot_pool = sum(r["pool"] for r in sources)
        tot_sub = sum(r["subset"] for r in sources)
        for r in sources:
            table.add_row(
                r["source"],
                str(r["pool"]),
                f"{100 * r['pool'] / tot_pool:.1f}",
                str(r["subset"]),
                f"{100 * r['subset'] / max(tot_sub, 1):.1f}",
                f"{100 * r['subset'] / max(r['pool'], 1):.1f}",
            )
        table.add_row(
            "[bold]all[/bold]",
            str(tot_pool),
            "100.0",
            str(tot_sub),
            "100.0",
            f"{100 * tot_sub / max(tot_pool, 1):.1f}",
        )
        console.print(table)
    clusters = summary.get("clusters")
    if clusters:
        sizes, taken = clusters["sizes"], clusters["taken"]
        console.print(
            f"clusters: {clusters['n_clusters']} (sizes {sizes[0]}..{sizes[-1]}, median "
            f"{sizes[len(sizes) // 2]}); {clusters['taken_whole']} small clusters taken whole, "
            f"the largest sampled at {taken[-1]}/{sizes[-1]}"
        )
    lengths = summary.get("mean_response_tokens")
    if lengths:
        console.print(f"mean response tokens: pool {lengths['pool']}, subset {lengths['subset']}")


def print_paths(paths: dict[str, Any], console: Console | None = None) -> None:
    """Print a table of named output paths."""
    console = console or Console()
    table = Table(title="written", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("path", overflow="fold")
    for what, path in paths.items():
        table.add_row(what, str(path))
    console.print(table)
