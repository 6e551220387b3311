"""The selection stage: what it writes, determinism, budgets, stratification, stale inputs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.formatting import load_tokenised
from smalltolarge.prepare import prepare
from smalltolarge.selection import water_fill
from smalltolarge.subset import select_subset

from .conftest import MAX_LENGTH, N_POOL


def test_writes_ids_subset_and_summary(run_copy, pool_file):
    result = select_subset(run_copy, method="s2l", budget=0.3, seed=0, n_clusters=10)
    n = round(0.3 * N_POOL)
    assert len(result.ids) == n == result.summary["n_selected"]
    assert len(set(result.ids)) == n
    assert (result.directory / "ids.txt").read_text().splitlines() == result.ids
    # the subset is the user's own lines, byte for byte, in pool order
    pool_lines = pool_file.read_bytes().splitlines(keepends=True)
    subset_lines = result.subset_path.read_bytes().splitlines(keepends=True)
    assert result.subset_path.name == "subset.jsonl"
    assert len(subset_lines) == n
    assert set(subset_lines) <= set(pool_lines)
    assert [json.loads(line)["id"] for line in subset_lines] == result.ids
    summary = json.loads((result.directory / "summary.json").read_text())
    assert summary["clusters"]["n_clusters"] == 10
    assert sum(summary["clusters"]["taken"]) == n
    assert sum(summary["clusters"]["sizes"]) == summary["n_scorable"]
    assert sum(r["subset"] for r in summary["sources"]) == n
    assert summary["n_pool"] == N_POOL


def test_same_seed_same_ids_other_seed_other_ids(run_copy):
    a = select_subset(run_copy, budget=40, seed=1, n_clusters=8, name="a")
    b = select_subset(run_copy, budget=40, seed=1, n_clusters=8, name="b")
    c = select_subset(run_copy, budget=40, seed=2, n_clusters=8, name="c")
    assert a.ids == b.ids
    assert (a.directory / "ids.txt").read_bytes() == (b.directory / "ids.txt").read_bytes()
    assert a.ids != c.ids


def test_reused_when_current_and_redone_when_forced(run_copy):
    first = select_subset(run_copy, budget=30, seed=0, n_clusters=5)
    again = select_subset(run_copy, budget=30, seed=0, n_clusters=5)
    assert again.reused and again.ids == first.ids
    forced = select_subset(run_copy, budget=30, seed=0, n_clusters=5, force=True)
    assert not forced.reused and forced.ids == first.ids


def test_excluded_examples_are_never_selected(run_copy):
    tokenised = load_tokenised(run_copy)
    excluded = {e["id"] for e in tokenised.excluded}
    assert excluded, "the fixture pool should have over-length prompts at max_length 128"
    everything = select_subset(run_copy, method="random", budget=len(tokenised), seed=0)
    assert len(everything.ids) == len(tokenised)
    assert not excluded & set(everything.ids)
    with pytest.raises(S2LError, match="selectable"):
        select_subset(run_copy, method="random", budget=len(tokenised) + 1, seed=0)


@pytest.mark.parametrize("budget", [0, -3, "1.5", N_POOL + 1, "lots"])
def test_bad_budgets_are_refused(run_copy, budget):
    with pytest.raises(S2LError, match="budget"):
        select_subset(run_copy, budget=budget)


def test_stratified_respects_source_quotas(run_copy):
    tokenised = load_tokenised(run_copy)
    pool_sources = json.loads((run_copy.root / "pool.json").read_text())
    assert pool_sources["schema"]["source"] == "source"
    result = select_subset(run_copy, budget=50, seed=0, n_clusters=4, stratify_by="source")
    from smalltolarge.data import load_saved_pool

    pool = load_saved_pool(run_copy)
    sources = np.asarray(pool.dataset["source"])[np.asarray(tokenised.dataset["pool_index"])]
    names, sizes = np.unique(sources, return_counts=True)
    expected = dict(zip(names.tolist(), water_fill(sizes, 50).tolist(), strict=True))
    id_to_source = dict(zip(pool.dataset["id"], pool.dataset["source"], strict=True))
    got = Counter(id_to_source[i] for i in result.ids)
    assert {s: got.get(s, 0) for s in expected} == expected
    assert result.summary["source_quotas"] == expected


def test_stratify_by_a_column_that_is_not_the_source_is_refused(run_copy):
    with pytest.raises(S2LError, match="--source-column difficulty"):
        select_subset(run_copy, budget=10, stratify_by="difficulty")


def test_trajectories_of_another_pool_are_refused(run_copy, pool_file, tmp_path):
    lines = pool_file.read_text().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["output"] += " (edited)"
    lines[0] = json.dumps(record) + "\n"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(lines))
    prepare(edited, run_copy, proxy="tiny", max_length=MAX_LENGTH, progress=False)
    with pytest.raises(S2LError, match="different pool"):
        select_subset(run_copy, budget=10)
