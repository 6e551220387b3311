"""The reference preset: settings resolution, the reference template, per-source selection with
outliers set aside, and the clustering warnings in the summary."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from smalltolarge.data import load_saved_pool
from smalltolarge.errors import S2LError
from smalltolarge.formatting import format_prompt, tokenise_pool
from smalltolarge.models import load_tokenizer
from smalltolarge.presets import PRESETS, apply_preset
from smalltolarge.report import print_selection_summary
from smalltolarge.subset import select_subset


def test_apply_preset_replaces_defaults_and_refuses_contradictions():
    assert apply_preset(None, template=("alpaca", "alpaca")) == {"template": "alpaca"}
    assert apply_preset("reference", template=("alpaca", "alpaca")) == {
        "template": "alpaca-reference"
    }
    # a value equal to the preset's is no contradiction; a setting the preset lacks passes
    assert apply_preset("reference", template=("alpaca-reference", "alpaca"), seed=(3, 0)) == {
        "template": "alpaca-reference",
        "seed": 3,
    }
    with pytest.raises(S2LError, match="contradicts"):
        apply_preset("reference", template=("chat", "alpaca"))
    with pytest.raises(S2LError, match="unknown preset 'paper'"):
        apply_preset("paper", template=("alpaca", "alpaca"))
    assert set(PRESETS["reference"]) == {
        "template",
        "score_precision",
        "stratify_by",
        "outlier_max_size",
    }


def test_reference_template_puts_the_response_right_after_the_colon(scored_run):
    pool = load_saved_pool(scored_run)
    tokenizer = load_tokenizer(scored_run.tokenizer_dir)
    prompt = format_prompt("Add 2 and 3.", template="alpaca-reference")
    assert prompt.endswith("### Response:") and "\n\n### Instruction:\nAdd 2 and 3." in prompt
    assert format_prompt("q", "ctx", template="alpaca-reference").endswith(
        "### Input:\nctx\n\n### Response:"
    )
    ours = tokenise_pool(pool, tokenizer, template="alpaca", max_length=512)
    ref = tokenise_pool(pool, tokenizer, template="alpaca-reference", max_length=512)
    for k in range(3):
        row, theirs = ref.dataset[k], ours.dataset[k]
        record = pool.dataset[k]
        prompt_ids = tokenizer(format_prompt(record["instruction"], template="alpaca-reference"))[
            "input_ids"
        ]
        response_ids = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        start = row["response_start"]
        assert row["input_ids"][:start] == prompt_ids
        assert tokenizer.decode(prompt_ids[-3:]).endswith("Response:")
        assert row["input_ids"][start:] == [*response_ids, tokenizer.eos_token_id]
        # same response tokens in both templates; the reference prompt lacks the newline
        assert theirs["input_ids"][theirs["response_start"] :] == row["input_ids"][start:]
        assert theirs["response_start"] > start


def _reference_source_quotas(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """The reference code's per-source split: smallest source first, equal share of the rest."""
    names = sorted(sizes, key=lambda name: sizes[name])
    quotas = {}
    for i, name in enumerate(names):
        share = budget // (len(names) - i)
        quotas[name] = sizes[name] if sizes[name] <= share else share
        budget -= quotas[name]
    return quotas


def test_reference_preset_selects_per_source_with_outliers_set_aside(run_copy):
    result = select_subset(run_copy, budget=48, seed=0, n_clusters=4, preset="reference")
    summary = result.summary
    sizes = {row["source"]: row["pool"] for row in summary["sources"]}
    assert len(set(sizes.values())) > 2  # uneven sources
    assert summary["source_quotas"] == _reference_source_quotas(sizes, 48)
    assert {row["source"]: row["subset"] for row in summary["sources"]} == _reference_source_quotas(
        sizes, 48
    )
    assert summary["preset"] == "reference" and summary["settings"]["stratified"] is True
    assert summary["settings"]["outlier_max_size"] == 2
    assert result.directory.name == "s2l-reference-stratified-48-k4-seed0"
    # per source, the effective K follows the rows of that source
    assert summary["n_clusters_requested"] == 4
    assert all(1 <= k <= 4 for k in summary["n_clusters_effective"].values())
    with pytest.raises(S2LError, match="contradicts"):
        select_subset(run_copy, budget=48, preset="reference", settings={"outlier_max_size": 3})


def test_warnings_reach_the_summary_file_and_the_printout(run_copy, tmp_path):
    many = select_subset(run_copy, budget=20, seed=0, n_clusters=1000, name="many")
    saved = json.loads((many.directory / "summary.json").read_text())
    assert saved["n_clusters_requested"] == 1000
    assert saved["n_clusters_effective"] == saved["clusters"]["n_clusters"] < 1000
    assert any("K reduced from 1000" in note for note in saved["warnings"])

    ids = load_saved_pool(run_copy).ids
    np.save(tmp_path / "flat.npy", np.ones((len(ids), 3), dtype=np.float32))
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    flat = select_subset(
        run_copy,
        budget=20,
        n_clusters=4,
        trajectories=tmp_path / "flat.npy",
        trajectory_ids=tmp_path / "ids.txt",
        name="flat",
    )
    assert any("identical" in note for note in flat.summary["warnings"])
    out = io.StringIO()
    print_selection_summary(flat.summary, Console(file=out, width=200))
    assert "warning:" in out.getvalue() and "identical" in out.getvalue()
