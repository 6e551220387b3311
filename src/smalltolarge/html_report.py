"""A self-contained HTML report of one selection: what the method picked, and why.

``write_report(RUN, selection=NAME)`` writes ``RUN/selections/NAME/report/`` with
``report.html`` (every image embedded as a base64 ``data:`` URI, no script, no network),
``report.json`` (the selection's name and fingerprint) and the PNGs it shows:

- ``cluster_curves.png``: each cluster's mean loss over the checkpoints with a +-1 std band;
  line width and opacity grow with the cluster's size, colour is the share of it taken;
- ``data_map.png``: a data map in the style of dataset cartography (Swayamdipta et al., 2020)
  for generative SFT: each example's mean loss over the trajectory against its variability
  (std over checkpoints), coloured by cluster (or source), selected examples ringed;
- ``sources.png``: each source's share of the pool and of the subset;
- ``cluster_sizes.png``: cluster sizes against what was taken from each.

The page also holds a few shortened prompts and responses per cluster, the selection's
settings, warnings and trajectory diagnostics. Per-example cluster labels come from the
selection's ``clusters.parquet`` (written by :func:`~smalltolarge.subset.select_subset` for
clustering methods); without it the cluster sections say so and the data map is coloured by
source.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smalltolarge.errors import S2LError
from smalltolarge.runs import RunDir, atomic_dir, atomic_write_json, atomic_write_text, read_json

#: Prompts and responses are cut to this many characters on the page.
SNIPPET_CHARS = 280
#: Examples shown per cluster.
EXAMPLES_PER_CLUSTER = 3
#: Clusters whose examples are listed (the largest first); the rest are counted in a note.
MAX_CLUSTERS_LISTED = 40

SECTIONS = ("overview", "settings", "warnings", "clusters", "data-map", "sources", "examples")


def write_report(run_dir: str | os.PathLike | RunDir, selection: str | None = None) -> Path:
    """Write the HTML report of one selection of ``run_dir`` and return the page's path.

    ``selection`` is the name of a directory under ``RUN/selections/``; by default the run's
    only selection, or the most recently written one. The report goes to
    ``RUN/selections/NAME/report/report.html`` (replaced atomically) beside its PNGs.

    Raises:
        S2LError: the run has no (complete) selection of that name.
    """
    import matplotlib

    matplotlib.use("Agg")

    run = RunDir.of(run_dir)
    sel_dir = _selection_dir(run, selection)
    data = _load(run, sel_dir)
    out = sel_dir / "report"
    with atomic_dir(out) as tmp:
        images = {}
        for name, draw in (
            ("cluster_curves.png", _plot_cluster_curves),
            ("data_map.png", _plot_data_map),
            ("sources.png", _plot_sources),
            ("cluster_sizes.png", _plot_cluster_sizes),
        ):
            if draw(data, tmp / name):
                images[name] = tmp / name
        atomic_write_text(tmp / "report.html", _page(data, images))
        # what the page shows, so that it can be told from a report of another selection
        atomic_write_json(
            tmp / "report.json",
            {"selection": sel_dir.name, "selection_fingerprint": data.summary.get("fingerprint")},
        )
    return out / "report.html"


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """What the report shows. Per-example arrays cover the selectable examples, shape (n,)."""

    name: str
    summary: dict[str, Any]
    ids: np.ndarray
    selected: np.ndarray  # bool
    losses: np.ndarray | None  # float32, (n, T)
    steps: list[int] | None
    labels: np.ndarray | None  # int64 cluster per example
    sources: np.ndarray | None
    prompts: list[str] | None
    responses: list[str] | None
    notes: list[str]


def _selection_dir(run: RunDir, selection: str | None) -> Path:
    if not run.root.is_dir():
        raise S2LError(f"{run.root}: the run directory does not exist")
    if selection is not None:
        path = run.selection_dir(selection)
        if not (path / "summary.json").is_file():
            raise S2LError(f"{path}: no complete selection (summary.json is missing)")
        return path
    found = sorted(
        (p for p in run.selections_dir.glob("*/summary.json")), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise S2LError(f"{run.root}: no selection yet (run `s2l select` first)")
    return found[-1].parent


def _load(run: RunDir, sel_dir: Path) -> _Data:
    from smalltolarge.data import load_saved_pool
    from smalltolarge.subset import CLUSTERS_FILE
    from smalltolarge.trajectories import load_run_trajectories

    summary = read_json(sel_dir / "summary.json")
    selected_ids = set((sel_dir / "ids.txt").read_text(encoding="utf-8").splitlines())
    notes: list[str] = []

    losses = steps = None
    try:
        if summary.get("imported_trajectories"):
            raise S2LError("the selection used imported trajectories")
        traj = load_run_trajectories(run)
        ids = np.asarray([str(i) for i in traj.ids], dtype=object)
        losses, steps = np.asarray(traj.losses, dtype=np.float32), list(traj.steps)
    except (S2LError, OSError, KeyError) as e:
        notes.append(f"no trajectories shown ({e})")
        ids = None

    pool = None
    try:
        pool = load_saved_pool(run)
    except (S2LError, OSError) as e:
        notes.append(f"no example texts shown ({e})")
    if ids is None:
        ids = np.asarray(pool.ids if pool is not None else sorted(selected_ids), dtype=object)

    prompts = responses = sources = None
    if pool is not None:
        where = {i: k for k, i in enumerate(pool.ids)}
        index = np.asarray([where.get(i, -1) for i in ids])
        if (index >= 0).all():
            ds = pool.dataset
            prompts = _take(ds["instruction"], index)
            inputs = _take(ds["input"], index)
            prompts = [p + (f"\n\n{x}" if x else "") for p, x in zip(prompts, inputs, strict=True)]
            responses = _take(ds["response"], index)
            if pool.has_sources:
                sources = np.asarray(_take(ds["source"], index), dtype=object)
        else:
            notes.append("the saved pool does not hold every trajectory's id; no texts shown")

    labels = None
    clusters_path = sel_dir / CLUSTERS_FILE
    if clusters_path.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(clusters_path).to_pydict()
        by_id = dict(zip(table["id"], table["cluster"], strict=True))
        if all(i in by_id for i in ids):
            labels = np.asarray([by_id[i] for i in ids], dtype=np.int64)
        else:
            notes.append(f"{CLUSTERS_FILE} does not cover every example; clusters not shown")
    else:
        notes.append(
            f"no per-example cluster labels ({CLUSTERS_FILE}): the method does not cluster, or "
            "the selection was written before labels were stored; re-run `s2l select --force`"
        )

    selected = np.asarray([i in selected_ids for i in ids], dtype=bool)
    return _Data(
        name=summary.get("name", sel_dir.name),
        summary=summary,
        ids=ids,
        selected=selected,
        losses=losses,
        steps=steps,
        labels=labels,
        sources=sources,
        prompts=prompts,
        responses=responses,
        notes=notes,
    )


def _take(column, index: np.ndarray) -> list[str]:
    values = list(column)
    return [values[k] for k in index]


def _cluster_table(data: _Data) -> list[dict[str, Any]]:
    """One row per cluster, largest first: size, taken, and (with losses) the mean curve."""
    if data.labels is None:
        return []
    rows = []
    for c in np.unique(data.labels):
        members = data.labels == c
        row = {
            "cluster": int(c),
            "size": int(members.sum()),
            "taken": int(data.selected[members].sum()),
        }
        if data.losses is not None:
            row["mean"] = data.losses[members].mean(axis=0)
            row["std"] = data.losses[members].std(axis=0)
        rows.append(row)
    rows.sort(key=lambda r: (-r["size"], r["cluster"]))
    return rows


# --------------------------------------------------------------------------------------------
# Plots: each returns False (and draws nothing) when its inputs are missing
# --------------------------------------------------------------------------------------------


def _plot_cluster_curves(data: _Data, path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    rows = _cluster_table(data)
    if not rows or data.losses is None:
        return False
    x = np.asarray(data.steps if data.steps else range(data.losses.shape[1]))
    biggest = max(r["size"] for r in rows)
    cmap = plt.get_cmap("viridis")
    norm = colors.Normalize(0, 1)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for r in sorted(rows, key=lambda r: r["size"]):  # large clusters on top
        weight = r["size"] / biggest
        colour = cmap(norm(r["taken"] / r["size"]))
        ax.fill_between(
            x, r["mean"] - r["std"], r["mean"] + r["std"], color=colour, alpha=0.04 + 0.1 * weight
        )
        ax.plot(x, r["mean"], color=colour, lw=0.5 + 3 * weight, alpha=0.35 + 0.65 * weight)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="share of cluster taken")
    ax.set_xlabel("proxy training step (checkpoint)")
    ax.set_ylabel("response loss (nats/token)")
    title = f"{len(rows)} trajectory clusters: mean +- 1 std (width = cluster size)"
    return _save(fig, ax, path, title, legend=False)


def _plot_data_map(data: _Data, path: Path) -> bool:
    import matplotlib.pyplot as plt

    if data.losses is None:
        return False
    mean, std = data.losses.mean(axis=1), data.losses.std(axis=1)
    if data.labels is not None:
        _, colour_of = np.unique(data.labels, return_inverse=True)
        what = "cluster"
    elif data.sources is not None:
        names, colour_of = np.unique(data.sources, return_inverse=True)
        what = "source"
    else:
        colour_of, what = np.zeros(len(mean), dtype=np.int64), None
    cmap = plt.get_cmap("tab20")
    point_colours = cmap(colour_of % 20)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    rest = ~data.selected
    ax.scatter(std[rest], mean[rest], s=8, c=point_colours[rest], alpha=0.35, linewidths=0)
    ax.scatter(
        std[data.selected],
        mean[data.selected],
        s=22,
        c=point_colours[data.selected],
        edgecolors="black",
        linewidths=0.7,
        label="selected",
    )
    if what == "source":
        for k, name in enumerate(names):
            ax.scatter([], [], s=22, color=cmap(k % 20), label=str(name))
    ax.set_xlabel("variability: std of the loss over the checkpoints")
    ax.set_ylabel("mean loss over the checkpoints (nats/token)")
    coloured = f", coloured by {what}" if what else ""
    return _save(fig, ax, path, f"data map{coloured}; selected examples ringed")


def _plot_sources(data: _Data, path: Path) -> bool:
    import matplotlib.pyplot as plt

    sources = data.summary.get("sources")
    if not sources:
        return False
    names = [r["source"] for r in sources]
    pool = np.asarray([r["pool"] for r in sources], dtype=float)
    subset = np.asarray([r["subset"] for r in sources], dtype=float)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.35 * len(names)), dpi=100)
    ax.barh(y - 0.2, 100 * pool / pool.sum(), height=0.4, label="pool", color="#999999")
    ax.barh(y + 0.2, 100 * subset / max(subset.sum(), 1), height=0.4, label="subset")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of examples (%)")
    return _save(fig, ax, path, "source mix: pool vs subset")


def _plot_cluster_sizes(data: _Data, path: Path) -> bool:
    import matplotlib.pyplot as plt

    rows = _cluster_table(data)
    if rows:
        sizes = np.asarray([r["size"] for r in rows])
        taken = np.asarray([r["taken"] for r in rows])
    elif data.summary.get("clusters"):
        # sorted ascending in the summary; the plot shows the largest first
        sizes = np.asarray(data.summary["clusters"]["sizes"])[::-1]
        taken = np.asarray(data.summary["clusters"]["taken"])[::-1]
    else:
        return False
    x = np.arange(len(sizes))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.bar(x, sizes, width=0.9, color="#cccccc", label="cluster size")
    ax.bar(x, taken, width=0.9, label="taken")
    ax.set_xlabel("cluster (largest first)")
    ax.set_ylabel("examples")
    return _save(fig, ax, path, "cluster sizes and what was taken from each")


def _save(fig, ax, path: Path, title: str, *, legend: bool = True) -> bool:
    """Give ``ax`` its title (and legend), write ``fig`` to ``path`` as PNG, close it; True."""
    import matplotlib.pyplot as plt

    if legend:
        ax.legend(fontsize=8)  # placed where it hides the fewest points ("best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-top:.5em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
img{max-width:100%}.warn{color:#8a5a00}.note{color:#666;font-style:italic}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em;margin:.2em 0;font-size:.85em}
.sel{border-left:3px solid #2a7}details{margin:.4em 0}
"""


def _page(data: _Data, images: dict[str, Path]) -> str:
    s = data.summary
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>S2L selection report: {e(data.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Selection report: {e(data.name)}</h1>",
        '<section id="overview"><h2>Overview</h2>',
        f"<p>{s.get('n_selected', int(data.selected.sum()))} of {s.get('n_pool', '?')} "
        f"examples selected with <b>{e(str(s.get('method', '?')))}</b> "
        f"(budget {e(str(s.get('budget')))}, seed {e(str(s.get('seed')))}"
        + (f", {s['n_checkpoints']} checkpoints" if s.get("n_checkpoints") else "")
        + ").</p>",
    ]
    parts += [f'<p class="note">{e(n)}</p>' for n in data.notes]
    parts.append("</section>")

    parts.append('<section id="settings"><h2>Settings</h2>')
    top = {
        k: s.get(k)
        for k in ("method", "preset", "budget", "seed", "n_selected", "n_pool", "n_excluded")
        if k in s
    }
    parts.append(_kv_table({**top, **s.get("settings", {})}))
    if s.get("mean_response_tokens"):
        parts.append(_kv_table({"mean response tokens": s["mean_response_tokens"]}))
    parts.append("</section>")

    parts.append('<section id="warnings"><h2>Warnings and diagnostics</h2>')
    warnings = s.get("warnings") or []
    if warnings:
        parts.append("<ul>" + "".join(f'<li class="warn">{e(w)}</li>' for w in warnings) + "</ul>")
    else:
        parts.append("<p>No warnings.</p>")
    diagnostics = {k: v for k, v in (s.get("diagnostics") or {}).items() if k != "warnings"}
    if diagnostics:
        parts.append(_kv_table(diagnostics))
    parts.append("</section>")

    parts.append('<section id="clusters"><h2>Trajectory clusters</h2>')
    parts.append(_figure(images, "cluster_curves.png", "cluster mean loss curves"))
    parts.append(_figure(images, "cluster_sizes.png", "cluster sizes vs taken"))
    rows = _cluster_table(data)
    if rows:
        parts.append(
            "<table><tr><th>cluster</th><th>size</th><th>taken</th><th>share</th>"
            + ("<th>loss first &rarr; last checkpoint</th>" if data.losses is not None else "")
            + "</tr>"
        )
        for r in rows:
            curve = f"<td>{r['mean'][0]:.3f} &rarr; {r['mean'][-1]:.3f}</td>" if "mean" in r else ""
            parts.append(
                f"<tr><td>{r['cluster']}</td><td>{r['size']}</td><td>{r['taken']}</td>"
                f"<td>{100 * r['taken'] / r['size']:.0f}%</td>{curve}</tr>"
            )
        parts.append("</table>")
    elif not images.get("cluster_sizes.png"):
        parts.append('<p class="note">This selection has no clusters.</p>')
    parts.append("</section>")

    parts.append('<section id="data-map"><h2>Data map</h2>')
    parts.append(_figure(images, "data_map.png", "data map"))
    parts.append("</section>")

    parts.append('<section id="sources"><h2>Source mix</h2>')
    parts.append(_figure(images, "sources.png", "source mix"))
    if s.get("sources"):
        parts.append(
            "<table><tr><th>source</th><th>pool</th><th>subset</th><th>taken</th></tr>"
            + "".join(
                f"<tr><td>{e(r['source'])}</td><td>{r['pool']}</td><td>{r['subset']}</td>"
                f"<td>{100 * r['subset'] / max(r['pool'], 1):.0f}%</td></tr>"
                for r in s["sources"]
            )
            + "</table>"
        )
    else:
        parts.append('<p class="note">The pool has no source column.</p>')
    parts.append("</section>")

    parts.append('<section id="examples"><h2>Examples per cluster</h2>')
    parts.append(_examples(data, rows))
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"


def _examples(data: _Data, rows: list[dict[str, Any]]) -> str:
    e = html.escape
    if data.prompts is None or data.responses is None:
        return '<p class="note">No example texts available.</p>'
    if not rows:
        groups = [("selected examples", np.flatnonzero(data.selected))]
    else:
        groups = [
            (
                f"cluster {r['cluster']}: {r['size']} examples, {r['taken']} taken",
                np.flatnonzero(data.labels == r["cluster"]),
            )
            for r in rows[:MAX_CLUSTERS_LISTED]
        ]
    out = []
    for title, members in groups:
        # selected members first, then the rest, each in pool order
        shown = np.concatenate([members[data.selected[members]], members[~data.selected[members]]])
        out.append(f"<details><summary>{e(title)}</summary>")
        for k in shown[:EXAMPLES_PER_CLUSTER]:
            tag = "selected" if data.selected[k] else "not selected"
            source = f", source {e(str(data.sources[k]))}" if data.sources is not None else ""
            out.append(
                f'<div class="{"sel" if data.selected[k] else ""}"><p>id {e(str(data.ids[k]))} '
                f"({tag}{source})</p><pre>{e(_shorten(data.prompts[k]))}</pre>"
                f"<pre>{e(_shorten(data.responses[k]))}</pre></div>"
            )
        out.append("</details>")
    if rows and len(rows) > MAX_CLUSTERS_LISTED:
        out.append(
            f'<p class="note">{len(rows) - MAX_CLUSTERS_LISTED} smaller clusters not listed.</p>'
        )
    return "\n".join(out)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "\u2026"


def _figure(images: dict[str, Path], name: str, alt: str) -> str:
    if name not in images:
        return f'<p class="note">No {html.escape(alt)} plot (its inputs are missing).</p>'
    encoded = base64.b64encode(images[name].read_bytes()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}"></p>'


def _kv_table(values: dict[str, Any]) -> str:
    rows = []
    for key, value in values.items():
        if isinstance(value, float):
            shown = f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            shown = json.dumps(_rounded(value), default=str)
        else:
            shown = str(value)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(shown)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _rounded(value: Any) -> Any:
    """``value`` with every float inside it cut to 4 significant digits, for display."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
