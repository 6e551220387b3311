"""Regression corpus of issue 9: bad or awkward inputs a new user tried, one case per item.

Each case runs the ``s2l`` command in-process on a copy of the session's scored run (or on a
tiny file made here) and checks the exit status, the words the message must contain, and that
nothing ends in a traceback or leaves a stage half-written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smalltolarge.cli import main
from smalltolarge.demo_data import DEMO_POOL
from tests.conftest import MAX_LENGTH, N_POOL


def s2l(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["s2l", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")  # help text on one line per option
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


def refused(code: int, err: str, *words: str) -> None:
    """One ``error: ...`` line on stderr, exit status 2, containing every word."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


def pool_ids(pool_file: Path) -> list[str]:
    return [json.loads(line)["id"] for line in pool_file.read_text().splitlines()]


def other_pool(tmp_path: Path) -> Path:
    """The next ``N_POOL`` bundled examples: a different pool with the same schema."""
    lines = DEMO_POOL.read_text(encoding="utf-8").splitlines()[N_POOL : 2 * N_POOL]
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- tracebacks and half-written state ---------------------------------------------------


def test_new_pool_in_old_run_names_train_proxy_and_keeps_trajectories(
    monkeypatch, capsys, run_copy, tmp_path
):
    root = run_copy.root
    code, _, err = s2l(
        monkeypatch, capsys, "prepare", other_pool(tmp_path), "-r", root, "--max-length", MAX_LENGTH
    )
    assert code == 0, err
    meta = (root / "trajectories" / "meta.json").read_bytes()
    for stage in ("select", "score"):
        code, _, err = s2l(monkeypatch, capsys, stage, "-r", root)
        refused(code, err, "different pool", "`s2l train-proxy`")
    # nothing was deleted or half-written by the refused score
    assert (root / "trajectories" / "meta.json").read_bytes() == meta
    assert not (root / "trajectories" / "parts").exists()


def test_run_dir_that_is_a_file(monkeypatch, capsys, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code, _, err = s2l(monkeypatch, capsys, "select", "--run-dir", a_file)
    refused(code, err, "notes.txt", "not a directory")


# ---- silent loss or silent degeneration --------------------------------------------------


def test_non_numeric_cell_in_trajectory_table(monkeypatch, capsys, run_copy, pool_file, tmp_path):
    table = tmp_path / "cartography.csv"
    rows = ["id,source,loss_1,loss_2,loss_3"]
    for k, i in enumerate(pool_ids(pool_file)):
        rows.append(f"{i},x,{1 + k % 7 / 10},{0.5 + k % 5 / 10},{'abc' if k == 5 else k % 3}")
    table.write_text("\n".join(rows) + "\n")
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root, "--trajectories", table)
    refused(code, err, "row 6", "'loss_3'", "'abc'")
    assert not (run_copy.root / "selections" / "s2l-0.3-seed0").exists()


def test_selections_with_other_settings_never_share_a_directory(monkeypatch, capsys, run_copy):
    root, selections = run_copy.root, run_copy.selections_dir
    for extra in (["--clusters", "5"], [], ["--budget", "0.30"], ["--budget", "30%"]):
        code, out, err = s2l(monkeypatch, capsys, "select", "-r", root, *extra)
        assert code == 0, err
    assert sorted(p.name for p in selections.iterdir()) == ["s2l-0.3-k5-seed0", "s2l-0.3-seed0"]

    code, _, err = s2l(
        monkeypatch, capsys, "select", "-r", root, "--name", "X", "--method", "random"
    )
    assert code == 0, err
    ids = (selections / "X" / "ids.txt").read_text()
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--name", "X")
    refused(code, err, "other settings", "method 'random' there, 's2l' now", "--force", "--name")
    assert (selections / "X" / "ids.txt").read_text() == ids
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--name", "X", "--force")
    assert code == 0, err
    assert json.loads((selections / "X" / "summary.json").read_text())["method"] == "s2l"


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--clusters", "500"], "K reduced from 500"),
        (["--budget", "0.0001"], "rounded up to 1"),
    ],
)
def test_clamping_is_said(monkeypatch, capsys, run_copy, extra, said):
    code, out, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root, *extra)
    assert code == 0, err
    assert said in out
    summary = next(run_copy.selections_dir.glob("*/summary.json"))
    assert any(said in w for w in json.loads(summary.read_text())["warnings"])


def test_constant_trajectories_are_said(monkeypatch, capsys, run_copy, pool_file, tmp_path):
    ids = pool_ids(pool_file)
    np.save(tmp_path / "flat.npy", np.ones((len(ids), 3), dtype=np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    code, out, err = s2l(
        monkeypatch,
        capsys,
        "select",
        "-r",
        run_copy.root,
        "--trajectories",
        tmp_path / "flat.npy",
        "--trajectory-ids",
        tmp_path / "ids.txt",
    )
    assert code == 0, err
    assert "are identical" in out


# ---- validation that comes too late or says the wrong thing ------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--clusters", "0"], ["n_clusters", ">= 1"]),
        (["--epochs", "0"], ["epochs must be positive"]),
        (["--checkpoints", "0"], ["checkpoints must be a positive integer"]),
        (["--stratify-by", "topic"], ["--stratify-by topic", "--source-column topic"]),
    ],
)
def test_run_checks_every_setting_before_training(
    monkeypatch, capsys, pool_file, tmp_path, extra, words
):
    run_dir = tmp_path / "r"
    code, _, err = s2l(monkeypatch, capsys, "run", pool_file, "-r", run_dir, *extra)
    refused(code, err, *words)
    assert not (run_dir / "proxy").exists()


def test_train_proxy_epochs_zero(monkeypatch, capsys, run_copy):
    code, _, err = s2l(monkeypatch, capsys, "train-proxy", "-r", run_copy.root, "--epochs", "0")
    refused(code, err, "epochs must be positive, not 0.0")


def test_missing_proxy_names_train_proxy(monkeypatch, capsys, run_copy):
    import shutil

    shutil.rmtree(run_copy.proxy_dir)
    shutil.rmtree(run_copy.trajectories_dir)
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root)
    refused(code, err, "`s2l train-proxy`")


def test_rows_left_out_of_imported_trajectories_are_not_called_too_long(
    monkeypatch, capsys, run_copy, pool_file, tmp_path
):
    ids = pool_ids(pool_file)
    losses = np.random.default_rng(0).random((len(ids) - 10, 3)).astype(np.float32)
    losses[0, 1] = np.nan
    np.save(tmp_path / "l.npy", losses)
    (tmp_path / "ids.txt").write_text("\n".join(ids[:-10]) + "\n")
    code, out, err = s2l(
        monkeypatch,
        capsys,
        "select",
        "-r",
        run_copy.root,
        "--trajectories",
        tmp_path / "l.npy",
        "--trajectory-ids",
        tmp_path / "ids.txt",
    )
    assert code == 0, err
    assert "11 not selectable (no trajectory, or a non-finite loss)" in out
    assert "too long" not in out


def test_local_model_path_that_does_not_exist(monkeypatch, capsys, pool_file, tmp_path):
    code, _, err = s2l(
        monkeypatch, capsys, "prepare", pool_file, "-r", tmp_path / "r", "--proxy", "./no/model"
    )
    refused(code, err, "./no/model", "no such directory")
    assert "Repo id" not in err
    assert not (tmp_path / "r").exists()


def test_mistyped_hub_name_offline_fails_at_once(monkeypatch, capsys, pool_file, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = s2l(
        monkeypatch,
        capsys,
        "prepare",
        pool_file,
        "-r",
        tmp_path / "r",
        "--proxy",
        "EleutherAI/pythia-70m-dedupd",
    )
    refused(code, err, "EleutherAI/pythia-70m-dedupd", "HF_HUB_OFFLINE")
    assert not (tmp_path / "r").exists()


def test_library_error_keeps_its_list():
    from smalltolarge.readers import first_line as _first_line

    message = _first_line(ValueError("Unrecognized tokenizer. Should be from one of:\n  a\n  b"))
    assert message.endswith("from one of: a b")


def test_json_object_instead_of_a_list(monkeypatch, capsys, tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({f"k{i}": {"instruction": "q", "output": "a"} for i in range(120)}))
    code, _, err = s2l(monkeypatch, capsys, "prepare", path, "-r", tmp_path / "r")
    refused(code, err, "one JSON object with 120 keys", "JSON list", "JSON Lines")
    assert "k119" not in err


@pytest.mark.parametrize(
    ("budget", "words"), [("0", ["at least 1 example"]), ("500", ["asks for 500"])]
)
def test_budget_messages(monkeypatch, capsys, run_copy, budget, words):
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root, "--budget", budget)
    refused(code, err, *words)
    assert "[0," not in err


def test_selector_budget_message_does_not_offer_zero_as_a_bound():
    from smalltolarge.errors import S2LError
    from smalltolarge.selection.base import check_budget

    with pytest.raises(S2LError, match="more examples than the 120 there are"):
        check_budget(121, 120)


def test_null_response_is_not_a_missing_field(monkeypatch, capsys, tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": null}\n')
    code, _, err = s2l(monkeypatch, capsys, "prepare", path, "-r", tmp_path / "r")
    refused(code, err, "line 2", "field 'output' is empty (null)")


# ---- the Python API and the output -------------------------------------------------------


def test_importing_the_package_sets_the_passive_openmp_wait_policy_and_small_onednn_caches():
    names = ("OMP_WAIT_POLICY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["LRU_CACHE_CAPACITY"] = "99"  # a value the user set is kept
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys, smalltolarge; "
            f"print(*[os.environ[n] for n in {names!r}], 'torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert out.split() == ["PASSIVE", "16", "99", "False"]


def test_progress_false_hides_library_bars_and_restores_them():
    import datasets
    from transformers.utils import logging as hf_logging

    from smalltolarge.progress import library_bars

    datasets.enable_progress_bars()
    hf_logging.enable_progress_bar()
    try:
        with library_bars(False):
            assert not datasets.is_progress_bar_enabled()
            assert not hf_logging.is_progress_bar_enabled()
        assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
    finally:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


def test_no_bars_and_whole_paths_in_a_log_file(capsys):
    from smalltolarge.progress import bar
    from smalltolarge.report import print_paths

    assert bar(progress=True, total=3).disable  # stderr is not a terminal under pytest
    long = "/a/very/long/run/directory/" + "x" * 90 + "/selections/s2l-0.3-seed0/ids.txt"
    print_paths({"selected ids": long})
    out = capsys.readouterr().out
    assert long in out
    assert "\x1b[" not in out


def test_help_texts_and_version(monkeypatch, capsys):
    code, out, _ = s2l(monkeypatch, capsys, "--version")
    assert code == 0 and "0.1.0" in out
    code, out, _ = s2l(monkeypatch, capsys, "run", "--help")
    assert code == 0 and "--force" in out and "Column of the response" in out
    code, out, _ = s2l(monkeypatch, capsys, "finetune", "--help")
    assert "Target fine-tuning epochs" in out and "Proxy training" not in out
    assert "--skip-invalid" in out
    code, out, _ = s2l(monkeypatch, capsys, "select", "--help")
    assert "s2l-shape" in out and "default 100" in out


def test_artifacts_respect_the_umask(tmp_path):
    from smalltolarge.runs import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
