"""Bad-input corpus, issue 23 item 4: messages that point the right way.

A directory that does not exist is called that (not "no selection yet", not a bare
"results.csv"); a target set with unknown columns is told which columns it needs, not an option
``select`` does not have; a dedup setting is named as the user typed it; a model path that
does not exist is refused at once, without the network; and nothing is announced before a
refusal.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.test_bad_inputs import other_pool, refused, s2l


def test_report_of_a_run_directory_that_does_not_exist(monkeypatch, capsys, tmp_path):
    code, _, err = s2l(monkeypatch, capsys, "report", tmp_path / "runs" / "nope")
    refused(code, err, "runs/nope", "does not exist")
    assert "no selection yet" not in err
    assert not (tmp_path / "runs").exists()


def test_curve_of_a_directory_that_does_not_exist(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = s2l(monkeypatch, capsys, "curve", "nope-dir")
    refused(code, err, "nope-dir", "does not exist")
    (tmp_path / "empty-dir").mkdir()
    code, _, err = s2l(monkeypatch, capsys, "curve", "empty-dir")
    refused(code, err, "empty-dir", "no results.csv")


def test_target_set_with_unknown_columns_names_what_it_needs(monkeypatch, capsys, run_copy):
    aim = run_copy.root.parent / "aim.jsonl"
    aim.write_text('{"a": "x", "b": "y"}\n')
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root, "--target-set", aim)
    refused(code, err, "aim.jsonl", "columns: a, b", "instruction/output", "rename")
    assert "--prompt-column" not in err and "--response-column" not in err
    assert not run_copy.selections_dir.exists()


def test_run_reads_the_target_set_before_training(monkeypatch, capsys, pool_file, tmp_path):
    aim = tmp_path / "aim.jsonl"
    aim.write_text('{"a": "x", "b": "y"}\n')
    run_dir = tmp_path / "r"
    code, _, err = s2l(monkeypatch, capsys, "run", pool_file, "-r", run_dir, "--target-set", aim)
    refused(code, err, "aim.jsonl", "instruction/output")
    assert "--prompt-column" not in err
    assert not (run_dir / "proxy").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["prepare", "POOL", "--dedup", "both", "--dedup-threshold", "1.5"],
         ["--dedup-threshold must be in (0, 1], not 1.5"]),
        (["run", "POOL", "--dedup", "both", "--dedup-threshold", "0"],
         ["--dedup-threshold must be in (0, 1], not 0.0"]),
        (["prepare", "POOL", "--dedup", "all"], ["unknown --dedup 'all'"]),
        (["dedup", "POOL", "-o", "OUT", "--threshold", "0"],
         ["--threshold must be in (0, 1], not 0.0"]),
        (["dedup", "POOL", "-o", "OUT", "--threshold", "2"], ["--threshold must be in (0, 1]"]),
        (["dedup", "POOL", "-o", "OUT", "--on", "words"], ["unknown --on 'words'"]),
    ],
)  # fmt: skip
def test_dedup_settings_are_named_as_typed(monkeypatch, capsys, pool_file, tmp_path, args, words):
    args = [pool_file if a == "POOL" else tmp_path / "out" if a == "OUT" else a for a in args]
    code, _, err = s2l(monkeypatch, capsys, *args, *(["-r", tmp_path / "r"] if
                                                     args[0] != "dedup" else []))  # fmt: skip
    refused(code, err, *words)
    assert "dedup_threshold" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "out").exists()


def test_dedup_settings_keep_their_names_in_python():
    from smalltolarge.dedup import DedupSettings
    from smalltolarge.errors import S2LError

    with pytest.raises(S2LError, match=r"^dedup_threshold must be in \(0, 1\]"):
        DedupSettings(threshold=0)


def no_network(*args, **kwargs):
    raise AssertionError("the network was asked about a local path")


@pytest.mark.parametrize("role", ["--target", "--proxy"])
def test_estimate_refuses_a_missing_model_path_at_once(
    monkeypatch, capsys, pool_file, tmp_path, role
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # so models/typo is a path here, not a hub owner/name
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("smalltolarge.hub._reachable", no_network)
    monkeypatch.setattr("socket.create_connection", no_network)
    other = ["--target", "tiny"] if role == "--proxy" else []
    started = time.perf_counter()
    code, out, err = s2l(
        monkeypatch, capsys, "estimate", pool_file, role, "models/typo", *other,
        "--tokens-per-second", "1000",
    )  # fmt: skip
    refused(code, err, "models/typo", "no such directory")
    assert time.perf_counter() - started < 5
    assert out == ""


def test_extend_checks_its_budget_before_announcing(monkeypatch, capsys, run_copy, tmp_path):
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root)
    assert code == 0, err
    before = json.loads((run_copy.root / "pool.json").read_text())
    code, out, err = s2l(
        monkeypatch, capsys, "extend", run_copy.root, other_pool(tmp_path), "--budget", "1.5"
    )
    refused(code, err, "1.5")
    assert out == "", out
    assert json.loads((run_copy.root / "pool.json").read_text()) == before
    assert not (run_copy.root / "extensions.json").exists()


def test_probe_checks_the_target_before_announcing(monkeypatch, capsys, run_copy):
    code, out, err = s2l(
        monkeypatch, capsys, "probe", "-r", run_copy.root, "--target", "./no/such/model"
    )
    refused(code, err, "./no/such/model", "no such directory")
    assert out == "", out
