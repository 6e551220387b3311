"""Human-readable reports of what a stage produced (rich tables on the terminal)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_selection_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print a selection's summary: per-source counts in pool vs subset, and cluster sizes."""
    console = console or _console()
    replaced = summary.get("replaced")
    if replaced:
        removed = ", ".join(replaced.get("removed") or [])
        console.print(  # a fact of this selection, true whenever its summary is shown
            f"this selection replaced (--force) the one made here before "
            f"({replaced.get('n_selected')} examples, fingerprint {replaced.get('fingerprint')})"
            + (f", and removed what was derived from that one: {removed}" if removed else ""),
            soft_wrap=True,
        )
    n_sel, n_pool = summary["n_selected"], summary["n_pool"]
    console.print(
        f"[bold]{summary.get('name', summary.get('method'))}[/bold]: selected {n_sel} of "
        f"{n_pool} examples ({100 * n_sel / n_pool:.1f}%), seed {summary['seed']}"
        + (
            f"; {summary['n_excluded']} not selectable "
            f"({summary.get('excluded_because', 'prompt too long for max_length')})"
            if summary.get("n_excluded")
            else ""
        ),
        soft_wrap=True,
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
        asked = summary.get("n_clusters_requested")
        console.print(
            f"clusters: {clusters['n_clusters']}"
            + (f" (K asked: {asked})" if asked not in (None, clusters["n_clusters"]) else "")
            + f"; sizes {sizes[0]}..{sizes[-1]}, median "
            f"{sizes[len(sizes) // 2]}; {clusters['taken_whole']} small clusters taken whole, "
            f"the largest sampled at {taken[-1]}/{sizes[-1]}"
        )
    targeted = summary.get("targeted")
    if targeted:
        share = targeted["target_share"]
        occupied = sum(1 for x in share if x > 0)
        console.print(
            f"target set: {targeted['n_target']} examples in {occupied} of {len(share)} "
            f"clusters; weight {targeted['target_weight']}: {targeted['moved']} of "
            f"{sum(targeted['quotas_plain'])} rows moved from S2L's quotas toward them",
            soft_wrap=True,
        )
    diagnostics = summary.get("diagnostics")
    if diagnostics and diagnostics.get("pc1_share") is not None:
        nmi = [
            f"NMI of clusters with {what} {diagnostics[key]:.2f}"
            for key, what in (("nmi_source", "source"), ("nmi_length", "response length"))
            if diagnostics.get(key) is not None
        ]
        console.print(
            f"trajectories: PC1 holds {100 * diagnostics['pc1_share']:.1f}% of the variance, "
            f"shape (what is left once each example's mean loss is removed) "
            f"{100 * diagnostics['shape_share']:.1f}%" + "".join(f"; {part}" for part in nmi),
            soft_wrap=True,
        )
    for note in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {note}", soft_wrap=True)
    lengths = summary.get("mean_response_tokens")
    if lengths:
        console.print(f"mean response tokens: pool {lengths['pool']}, subset {lengths['subset']}")


def print_paths(paths: dict[str, Any], console: Console | None = None) -> None:
    """Print a table of named output paths."""
    console = console or _console()
    table = Table(title="written", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("path", overflow="fold")
    for what, path in paths.items():
        table.add_row(what, str(path))
    console.print(table)


def _console() -> Console:
    """A console for stdout. In a log file (not a terminal) lines are never wrapped and
    tables take the width they need, so paths stay whole and copyable."""
    console = Console(soft_wrap=True)
    if console.is_terminal:
        return console
    return Console(soft_wrap=True, width=10_000)
