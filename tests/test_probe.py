"""The target probe (``s2l probe``): a seeded per-source sample of the pool scored by the
untrained target, saved in the run, reused, and reported in every selection's summary as the
proxy's fit (proxy final loss against the target's probe loss)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smalltolarge.errors import S2LError
from smalltolarge.probe import (
    load_probe,
    probe_target,
    proxy_fit,
    proxy_fit_warnings,
    sample_rows,
)
from smalltolarge.selection import Signals
from smalltolarge.settings import ProbeSettings
from tests.conftest import tiny_llama

#: the target's tokenizer is a 512-token BPE: its prompts are longer than the proxy's
MAX_LENGTH = 512

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory, tokenizer):
    """A small 'target': a randomly initialised Llama saved with its own tokenizer."""
    out = tmp_path_factory.mktemp("target") / "target"
    tiny_llama(tokenizer, seed=3).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_sample_rows_takes_the_fraction_of_every_source():
    sources = np.array(["a"] * 40 + ["b"] * 8 + ["c"] * 2, dtype=object)
    rows = sample_rows(sources, 0.25, 1000, seed=0)
    assert np.all(np.diff(rows) > 0)
    taken = {s: int((sources[rows] == s).sum()) for s in "abc"}
    assert taken == {"a": 10, "b": 2, "c": 1}  # a small source still gets one
    assert np.array_equal(rows, sample_rows(sources, 0.25, 1000, seed=0))
    assert not np.array_equal(rows, sample_rows(sources, 0.25, 1000, seed=1))
    # the cap lowers the fraction
    assert len(sample_rows(sources, 0.5, 10, seed=0)) <= 11


def test_probe_writes_reuses_and_is_deterministic(run_copy, target_dir, capsys):
    probe = probe_target(run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.3)
    out = run_copy.root / "probe"
    meta = json.loads((out / "probe.json").read_text())
    assert meta["counts_against_budget"] is False
    assert meta["n_probed"] == len(probe.ids) == len(probe.losses) > 0
    assert meta["seconds"] >= 0 and meta["tokens"] > 0
    assert np.isfinite(probe.losses).all() and (probe.losses > 0).all()
    assert meta["n_not_scorable"] == 0
    loaded = load_probe(run_copy)
    assert loaded.ids == probe.ids and np.array_equal(loaded.losses, probe.losses)
    capsys.readouterr()
    again = probe_target(run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.3)
    assert "reused" in capsys.readouterr().out
    assert again.ids == probe.ids
    redone = probe_target(
        run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.3, force=True
    )
    assert redone.ids == probe.ids and np.allclose(redone.losses, probe.losses, atol=1e-5)
    other = probe_target(run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.3, seed=1)
    assert other.ids != probe.ids


def test_probe_refuses_bad_settings(run_copy, target_dir):
    with pytest.raises(S2LError, match="fraction"):
        probe_target(run_copy, str(target_dir), fraction=0.0)
    with pytest.raises(S2LError, match="target must be a non-empty name"):
        probe_target(run_copy, "")
    with pytest.raises(S2LError, match="max_examples"):
        ProbeSettings(max_examples=0)


def test_selection_reports_the_proxy_fit(run_copy, target_dir):
    from smalltolarge.subset import select_subset

    probe_target(run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.5, progress=False)
    result = select_subset(run_copy, method="random", budget=0.2, seed=0)
    fit = result.summary["proxy_fit"]
    assert fit["n_probed"] == result.summary["probe"]["n_probed"] > 10
    assert -1 <= fit["spearman"] <= 1 and -1 <= fit["pearson"] <= 1
    assert set(fit["per_source"]) <= {s["source"] for s in result.summary["sources"]}
    assert result.summary["probe"]["counts_against_budget"] is False


def test_proxy_fit_and_its_warnings():
    rng = np.random.default_rng(0)
    final = rng.uniform(1, 3, 60)
    sources = np.array(["a", "b", "c"] * 20, dtype=object)
    probe = np.where(np.arange(60) % 2 == 0, 2 * final + 0.1, np.nan)
    fit = proxy_fit(final, probe, sources)
    assert fit["n_probed"] == 30 and fit["spearman"] == pytest.approx(1.0)
    assert fit["within_source_mean"] == pytest.approx(1.0) and fit["sources_negative"] == 0
    assert proxy_fit_warnings(fit) == []
    reverse = proxy_fit(final, np.where(np.isnan(probe), np.nan, 5 - final), sources)
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["sources_negative"] == 3
    notes = proxy_fit_warnings(reverse)
    assert len(notes) == 2 and "premise" in notes[0] and "truncate-model" in notes[0]
    assert proxy_fit(final, np.full(60, np.nan)) is None


def test_signals_check_the_probe():
    losses = np.ones((4, 2), dtype=np.float32)
    ok = Signals(losses, np.arange(4), target_probe=[1.0, np.nan, 2.0, np.nan])
    assert ok.subset(np.array([0, 2])).target_probe.tolist() == [1.0, 2.0]
    with pytest.raises(S2LError, match="target_probe must have shape"):
        Signals(losses, np.arange(4), target_probe=[1.0, 2.0])
    with pytest.raises(S2LError, match="non-negative"):
        Signals(losses, np.arange(4), target_probe=[1.0, -2.0, 0, 0])


def test_probe_marks_examples_the_target_cannot_score(run_copy, target_dir):
    probe = probe_target(run_copy, str(target_dir), max_length=48, fraction=0.3, progress=False)
    missing = int(np.isnan(probe.losses).sum())
    assert 0 < missing < len(probe.ids)  # prompts longer than 48 target tokens
    assert load_probe(run_copy).meta["n_not_scorable"] == missing


def test_checked_selection_reads_the_probe(run_copy, target_dir):
    from smalltolarge.subset import select_subset

    with pytest.raises(S2LError, match="needs the target's probe losses: run `s2l probe"):
        select_subset(run_copy, method="s2l-checked", budget=0.2)
    probe_target(run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.5, progress=False)
    first = select_subset(run_copy, method="s2l-checked", budget=0.2, stratify_by="source")
    again = select_subset(run_copy, method="s2l-checked", budget=0.2, stratify_by="source")
    assert again.reused and again.ids == first.ids
    assert "proxy_fit" in first.summary and first.summary["probe"]["n_probed"] > 0
    # a new probe is a new input of s2l-checked: the selection is not reused
    probe_target(
        run_copy, str(target_dir), max_length=MAX_LENGTH, fraction=0.5, seed=1, progress=False
    )
    assert (
        first.summary["fingerprint"]
        != select_subset(
            run_copy, method="s2l-checked", budget=0.2, stratify_by="source", name="after", seed=0
        ).summary["fingerprint"]
    )
