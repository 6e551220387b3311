"""The HTML report of a selection: structure, embedded images, cluster labels and fallbacks."""

from __future__ import annotations

import sys
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest

from smalltolarge.cli import main
from smalltolarge.errors import S2LError
from smalltolarge.html_report import SECTIONS, write_report
from smalltolarge.subset import CLUSTERS_FILE, select_subset


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag in ("link", "a") and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "script":
            self.scripts += 1


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_s2l_report_is_self_contained_with_every_section(run_copy):
    result = select_subset(run_copy, method="s2l", budget=0.3, seed=0, n_clusters=6)
    labels = pq.read_table(result.directory / CLUSTERS_FILE).to_pydict()
    assert len(labels["id"]) == result.summary["n_scorable"]
    sizes = np.bincount(labels["cluster"])
    assert sorted(sizes.tolist()) == result.summary["clusters"]["sizes"]

    page_path = write_report(run_copy, result.directory.name)
    assert page_path == result.directory / "report" / "report.html"
    page = _parse(page_path)
    assert page.sections == list(SECTIONS)
    assert page.scripts == 0 and page.links == []
    assert len(page.images) == 4
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    for png in ("cluster_curves.png", "data_map.png", "sources.png", "cluster_sizes.png"):
        assert (page_path.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page_path.read_text(encoding="utf-8")
    assert text.count("<details>") == 6  # one per cluster
    assert "no per-example cluster labels" not in text


def test_stratified_selection_has_global_labels(run_copy):
    result = select_subset(
        run_copy, method="s2l", budget=0.3, seed=0, n_clusters=3, stratify_by="source"
    )
    labels = pq.read_table(result.directory / CLUSTERS_FILE).to_pydict()["cluster"]
    assert len(set(labels)) == result.summary["clusters"]["n_clusters"]
    page = _parse(write_report(run_copy, result.directory.name))
    assert all(src.startswith("data:") for src in page.images) and len(page.images) == 4


def test_method_without_clusters_falls_back(run_copy):
    result = select_subset(run_copy, method="random", budget=20, seed=0)
    assert not (result.directory / CLUSTERS_FILE).exists()
    page_path = write_report(run_copy)  # the latest selection
    page = _parse(page_path)
    assert page.sections == list(SECTIONS)
    # data map (coloured by source) and source mix only
    assert len(page.images) == 2 and all(src.startswith("data:") for src in page.images)
    assert "no per-example cluster labels" in page_path.read_text(encoding="utf-8")


def test_texts_are_escaped(run_copy):
    result = select_subset(run_copy, method="s2l", budget=0.3, seed=0, n_clusters=4)
    text = write_report(run_copy, result.directory.name).read_text(encoding="utf-8")
    body = text.split('<section id="examples">', 1)[1]
    # the only tags in the examples are the page's own
    tags = {t.split(">")[0].split()[0] for t in body.split("<")[1:]}
    assert tags <= {"h2", "/h2", "details", "/details", "summary", "/summary", "div", "/div",
                    "p", "/p", "pre", "/pre", "/section", "/body", "/html"}  # fmt: skip


def test_missing_selection_is_refused(run_copy):
    with pytest.raises(S2LError, match="no selection yet"):
        write_report(run_copy)
    with pytest.raises(S2LError, match="no complete selection"):
        write_report(run_copy, "nope")


def test_select_with_report_flag(monkeypatch, capsys, run_copy):
    args = ["s2l", "select", "--run-dir", str(run_copy.root), "--budget", "30", "--clusters", "4"]
    monkeypatch.setattr(sys, "argv", [*args, "--name", "flagged", "--report"])
    with pytest.raises(SystemExit) as done:
        main()
    assert not done.value.code
    out = capsys.readouterr().out
    page = run_copy.selection_dir("flagged") / "report" / "report.html"
    assert page.is_file() and f"report: {page}" in out.replace("\n", "")
    monkeypatch.setattr(sys, "argv", ["s2l", "report", str(run_copy.root)])
    with pytest.raises(SystemExit) as done:
        main()
    assert not done.value.code
    assert "report.html" in capsys.readouterr().out
