"""Tests for smalltolarge.dedup: planted exact and near duplicates are found (recall and
precision), a distinct pool has none, results are deterministic, ``prepare(dedup=...)`` drops
and records them, ``s2l dedup`` writes the kept examples, and bad settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smalltolarge.data import load_pool, load_saved_pool, write_subset
from smalltolarge.dedup import (
    DedupSettings,
    count_duplicates,
    dedup_pool,
    find_duplicates,
    normalise_text,
    pair_precision_recall,
)
from smalltolarge.errors import S2LError
from smalltolarge.prepare import prepare
from smalltolarge.runs import RunDir, read_json
from tests.test_cli import assert_clean_error, s2l

_WORD_TEXT = (
    "river mountain robot teacher garden dragon city ocean library engine forest bright quiet "
    "ancient careful sudden gentle strange market window letter answer number problem method "
    "reason simple result before after during under around through between against without "
    "carry build write count measure follow explain compare choose travel listen"
)
WORDS = tuple(_WORD_TEXT.split())
N_DISTINCT = 30


def distinct_records(n: int = N_DISTINCT, seed: int = 0) -> list[dict]:
    """``n`` examples with unrelated prompts and responses (40-60 random words each)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS, size=8)).capitalize() + "?"
        response = " ".join(rng.choice(WORDS, size=int(rng.integers(40, 60)))) + "."
        records.append({"id": f"d{i}", "instruction": prompt, "input": "", "output": response})
    return records


def planted_pool() -> tuple[list[dict], list[str], dict[str, str]]:
    """Distinct examples with planted copies placed after their originals.

    Returns the records, each record's true group label (the original's id), and the kind of
    every planted group (by original id).
    """
    records = distinct_records()
    planted, kinds = [], {}

    def exact(i: int, instruction: str, output: str) -> None:
        planted.append({"instruction": instruction, "input": "", "output": output, "of": i})
        kinds[f"d{i}"] = "exact"

    def near(i: int, *swaps: tuple[int, str]) -> None:
        words = records[i]["output"].split(" ")
        for position, word in swaps:
            words[position] = word
        copy = {**records[i], "output": " ".join(words), "of": i}
        planted.append(copy)
        kinds[f"d{i}"] = "near"

    r = records
    exact(2, r[2]["instruction"].upper(), r[2]["output"].upper())  # case
    exact(2, "  " + r[2]["instruction"].replace(" ", "\n  "), r[2]["output"] + "  ")  # spaces
    exact(5, r[5]["instruction"].rstrip("?"), r[5]["output"].rstrip(".") + "!")  # punctuation
    exact(11, r[11]["instruction"].title(), r[11]["output"].replace(" ", ", ", 3))
    near(7, (3, "zebra"))  # one word changed
    near(13, (0, "yellow"), (20, "purple"))  # two
    near(21, (5, "violin"), (15, "cactus"), (30, "walrus"))  # three
    near(21, (10, "tundra"))  # a second near copy of the same original

    labels = [rec["id"] for rec in records]
    for k, copy in enumerate(planted):
        original = copy.pop("of")
        records.append({**copy, "id": f"p{k}"})
        labels.append(f"d{original}")
    return records, labels, kinds


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def planted(tmp_path):
    records, labels, kinds = planted_pool()
    return load_pool(write_jsonl(tmp_path / "pool.jsonl", records)), labels, kinds


def test_planted_duplicates_are_found_with_full_recall_and_precision(planted):
    pool, labels, kinds = planted
    groups = find_duplicates(pool)
    precision, recall = pair_precision_recall(groups, labels)
    assert (precision, recall) == (1.0, 1.0)
    ids = pool.ids
    found = {ids[g.kept]: (g.kind, sorted(ids[i] for i in g.dropped)) for g in groups}
    assert found == {
        "d2": ("exact", ["p0", "p1"]),
        "d5": ("exact", ["p2"]),
        "d11": ("exact", ["p3"]),
        "d7": ("near", ["p4"]),
        "d13": ("near", ["p5"]),
        "d21": ("near", ["p6", "p7"]),
    }
    assert {kept: kind for kept, (kind, _) in found.items()} == kinds


def test_distinct_pool_has_no_groups(tmp_path):
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", distinct_records(60, seed=1)))
    assert find_duplicates(pool) == []
    assert find_duplicates(pool, threshold=0.5) == []


def test_deterministic_and_kept_member_comes_first(planted):
    pool, _, _ = planted
    first = find_duplicates(pool, seed=3)
    assert find_duplicates(pool, seed=3) == first
    assert all(g.members == tuple(sorted(g.members)) and g.kept < min(g.dropped) for g in first)


def test_compared_text_follows_on(tmp_path):
    same_prompt = "Explain the rule of three for fractions"
    records = distinct_records(4)
    records[1]["instruction"] = same_prompt
    records[3]["instruction"] = same_prompt.upper() + "!"
    records[2]["output"] = records[0]["output"].replace(".", "")
    pool = load_pool(write_jsonl(tmp_path / "pool.jsonl", records))

    def pairs(on: str) -> list[tuple[int, ...]]:
        return [g.members for g in find_duplicates(pool, on=on)]

    assert pairs("prompt") == [(1, 3)]
    assert pairs("response") == [(0, 2)]
    assert pairs("both") == []


def test_normalise_text_drops_case_space_and_sentence_punctuation_only():
    assert normalise_text("  Hello,\tWORLD!  It’s “fine”. ") == "hello world it’s fine"
    assert normalise_text("What is 3.5 * 2?") == "what is 3.5 * 2"
    assert normalise_text("3.5") != normalise_text("35")
    assert normalise_text("2*3 = 6") != normalise_text("2/3 = 6")
    assert normalise_text("ｆｕｌｌ ｗｉｄｔｈ") == "full width"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(on="instruction"), "unknown dedup 'instruction'; choose one of prompt, response"),
        (dict(threshold=0.0), "dedup_threshold must be in (0, 1], not 0.0"),
        (dict(threshold=1.2), "dedup_threshold must be in (0, 1], not 1.2"),
        (dict(num_perm=1), "dedup num_perm must be at least 2"),
        (dict(shingle=0), "dedup shingle must be a positive integer"),
        (dict(seed=-1), "dedup seed must be an integer >= 0"),
    ],
)
def test_bad_settings_are_refused(planted, settings, message):
    pool, _, _ = planted
    with pytest.raises(S2LError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_duplicates(pool, **settings)


def test_dedup_pool_keeps_rows_and_records_the_dropped(planted, tmp_path):
    pool, labels, _ = planted
    settings = DedupSettings()
    deduped, groups = dedup_pool(pool, settings)
    assert len(deduped) == N_DISTINCT
    assert deduped.ids == [f"d{i}" for i in range(N_DISTINCT)]
    assert deduped.fingerprint == settings.pool_fingerprint(pool.fingerprint) != pool.fingerprint
    assert [s["problem"] for s in deduped.skipped][:2] == [
        "duplicate of d2 (exact)",
        "duplicate of d2 (exact)",
    ]
    # the kept examples are still written from the original file
    rows = deduped.dataset["row"]
    written = write_subset(deduped, rows, tmp_path / "out")
    assert written.read_text().count("\n") == N_DISTINCT


def test_prepare_with_dedup_drops_records_and_reuses(planted, tmp_path):
    pool, _, _ = planted
    run = RunDir(tmp_path / "run")
    kw = dict(proxy="tiny", max_length=64, progress=False)
    prepared = prepare(pool.source_path, run, dedup="both", **kw)
    assert len(prepared.pool) == len(prepared.tokenised) == N_DISTINCT
    meta = read_json(run.pool_meta)
    assert meta["n"] == N_DISTINCT
    assert sum("duplicate of" in s["problem"] for s in meta["skipped"]) == 8
    assert count_duplicates(meta["skipped"]) == 8  # what selection summaries count apart
    assert count_duplicates([{"where": "p.jsonl line 3", "problem": "empty response"}]) == 0
    report = read_json(run.root / "duplicates.json")
    assert (report["n_dropped"], report["n_dropped_exact"], report["n_dropped_near"]) == (8, 4, 4)
    assert {"kept": "d21", "dropped": ["p6", "p7"], "kind": "near"} in report["groups"]
    assert len(load_saved_pool(run)) == N_DISTINCT

    assert prepare(pool.source_path, run, dedup="both", **kw).reused
    # A stricter threshold is other settings: the pool is deduplicated again.
    stricter = prepare(pool.source_path, run, dedup="both", dedup_threshold=0.95, **kw)
    assert not stricter.reused
    assert read_json(run.root / "duplicates.json")["settings"]["threshold"] == 0.95
    plain = prepare(pool.source_path, run, **kw)
    assert not plain.reused and len(plain.pool) == len(pool)
    assert not (run.root / "duplicates.json").exists()


def test_cli_dedup_and_prepare_options(planted, tmp_path, monkeypatch, capsys):
    pool, _, _ = planted
    out = tmp_path / "out"
    code, stdout, err = s2l(monkeypatch, capsys, "dedup", pool.source_path, "-o", out)
    assert code == 0, err
    assert f"kept {N_DISTINCT} of {len(pool)} examples" in stdout
    assert (out / "subset.jsonl").read_text().count("\n") == N_DISTINCT
    assert read_json(out / "duplicates.json")["n_groups"] == 6

    code, _, err = s2l(monkeypatch, capsys, "prepare", pool.source_path, "--dedup", "all")
    assert_clean_error(code, err, "unknown --dedup 'all'")
    run = tmp_path / "run"
    code, _, err = s2l(
        monkeypatch, capsys, "prepare", pool.source_path, "-r", run, "--dedup-threshold", "0.5"
    )
    assert_clean_error(code, err, "--dedup-threshold needs --dedup")
    assert not run.exists()
