"""Bad-input corpus, issue 23 item 2: plausible input never ends in a traceback.

A dedup threshold of 1 (valid: the shingle sets must be equal), a negative curve tolerance, and
an output path (-o) that is an existing file each used to crash inside a library; now the
first works and the others are refused in one line that names the value.
"""

from __future__ import annotations

import json

import pytest

from smalltolarge.data import load_pool
from smalltolarge.dedup import find_duplicates
from smalltolarge.errors import S2LError
from tests.test_bad_inputs import refused, s2l
from tests.test_curves import _write as write_results


def shingle_twins(tmp_path):
    """A pool where d0 and d1 differ as texts but have the same character 5-grams (a repeated
    phrase, repeated once more), d2 differs from d0 by one word, d3 is unrelated."""
    phrase = "add the two numbers then halve it "
    prompts = [phrase * 3, phrase * 4, phrase * 2 + "add the two numbers then double it"]
    records = [{"id": f"d{i}", "instruction": p, "output": "seven"} for i, p in enumerate(prompts)]
    records.append({"id": "d3", "instruction": "name a prime above ten", "output": "eleven"})
    path = tmp_path / "twins.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("threshold", [1.0, 0.99999])
def test_dedup_threshold_one_groups_equal_shingle_sets_only(tmp_path, threshold):
    pool = load_pool(shingle_twins(tmp_path))
    groups = find_duplicates(pool, on="prompt", threshold=threshold)
    assert [(g.members, g.kind) for g in groups] == [((0, 1), "near")]
    loose = find_duplicates(pool, on="prompt", threshold=0.5)
    assert [g.members for g in loose] == [(0, 1, 2)]


def test_threshold_one_on_the_command_line(monkeypatch, capsys, tmp_path):
    pool = shingle_twins(tmp_path)
    code, out, err = s2l(
        monkeypatch, capsys, "dedup", pool, "-o", tmp_path / "out", "--on", "prompt",
        "--threshold", "1",
    )  # fmt: skip
    assert code == 0, err
    assert "kept 3 of 4 examples" in out
    code, out, err = s2l(
        monkeypatch, capsys, "prepare", pool, "-r", tmp_path / "run", "--dedup", "prompt",
        "--dedup-threshold", "1",
    )  # fmt: skip
    assert code == 0, err
    skipped = json.loads((tmp_path / "run" / "pool.json").read_text())["skipped"]
    assert [s["id"] for s in skipped] == ["d1"]


@pytest.mark.parametrize("tolerance", ["-1", "-0.001", "nan"])
def test_negative_curve_tolerance_is_refused(monkeypatch, capsys, tmp_path, tolerance):
    write_results(tmp_path, {"s2l": (0.05, 0.8)}, budgets=(0.05, 0.1, 0.2, 0.4))
    code, _, err = s2l(monkeypatch, capsys, "curve", tmp_path, "--tolerance", tolerance)
    refused(code, err, "tolerance must be >= 0", tolerance)
    assert not (tmp_path / "learning_curves.md").exists()
    from smalltolarge.curves import fit_learning_curves

    with pytest.raises(S2LError, match="relative_tolerance must be >= 0"):
        fit_learning_curves(tmp_path, relative_tolerance=-0.5)


def test_zero_tolerance_asks_for_the_full_pool(tmp_path):
    from smalltolarge.curves import fit_learning_curves

    write_results(tmp_path, {"s2l": (0.05, 0.8)}, budgets=(0.05, 0.1, 0.2, 0.4))
    fit = next(f for f in fit_learning_curves(tmp_path, tolerance=0, resamples=20) if f.b > 0)
    assert fit.x_needed == pytest.approx(1.0)


def test_export_to_an_existing_file(monkeypatch, capsys, run_copy, tmp_path):
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root)
    assert code == 0, err
    selection = run_copy.selections_dir / "s2l-0.3-seed0"
    a_file = tmp_path / "taken.json"
    a_file.write_text("{}")
    code, _, err = s2l(monkeypatch, capsys, "export", selection, "-f", "alpaca", "-o", a_file)
    refused(code, err, str(a_file), "is a file, not a directory")
    assert a_file.read_text() == "{}"


def test_dedup_to_an_existing_file(monkeypatch, capsys, pool_file, tmp_path):
    a_file = tmp_path / "taken.jsonl"
    a_file.write_text("x\n")
    code, _, err = s2l(monkeypatch, capsys, "dedup", pool_file, "-o", a_file)
    refused(code, err, str(a_file), "is a file, not a directory")
    assert a_file.read_text() == "x\n"


@pytest.mark.parametrize("command", ["evaluate", "finetune"])
def test_target_commands_to_an_existing_file(monkeypatch, capsys, pool_file, tmp_path, command):
    a_file = tmp_path / "taken"
    a_file.write_text("x\n")
    extra = ["--metric", "loss"] if command == "evaluate" else []
    code, _, err = s2l(monkeypatch, capsys, command, "tiny", pool_file, "-o", a_file, *extra)
    refused(code, err, str(a_file), "is a file, not a directory")


def test_experiment_out_dir_that_is_a_file(tmp_path):
    from smalltolarge.experiment import load_config

    a_file = tmp_path / "taken"
    a_file.write_text("x\n")
    config = {
        "name": "x",
        "pool": "bundled:demo_pool",
        "eval": "bundled:demo_eval",
        "target": {"model": "smollm2-135m"},
        "methods": [{"method": "random", "budgets": [0.1]}],
    }
    with pytest.raises(S2LError, match="is a file, not a directory"):
        load_config(config, out_dir=a_file)
