"""The ``s2l`` command: the stages are listed, a small end-to-end run, and bad input.

Bad input must give a one-line ``error: ...`` on stderr, exit status 2, no traceback, and
happen before any expensive work (no proxy is trained).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from smalltolarge.cli import main
from smalltolarge.settings import (
    DEFAULT_RUN_DIR,
    PRECISIONS,
    EvalSettings,
    FinetuneSettings,
    PrepareSettings,
    ProxySettings,
    ScoreSettings,
    SelectSettings,
    parse_budget,
)

SMALL_RUN = [
    "--max-length",
    "128",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--checkpoints",
    "3",
    "--precision",
    "fp32",
    "--clusters",
    "6",
]


def s2l(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process; return (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["s2l", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_the_stages():
    out = subprocess.run(
        [sys.executable, "-m", "smalltolarge", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("prepare", "train-proxy", "score", "select", "run", "demo"):
        assert command in out


def test_no_help_text_is_swallowed_as_rich_markup():
    """``--help`` is rendered by rich, which drops a ``[word ...]`` it takes for a style tag
    (a hand-written ``[default: x]`` vanished that way): no option's help may contain one."""
    import re

    import typer.main

    from smalltolarge.cli import app

    group = typer.main.get_command(app)
    swallowed = [
        f"{name} {param.name}: {param.help}"
        for name, command in group.commands.items()
        for param in command.params
        if re.search(r"\[[a-z]", getattr(param, "help", None) or "")
    ]
    assert not swallowed


def click_command(name: str):
    import typer.main

    from smalltolarge.cli import app

    return typer.main.get_command(app).commands[name]


#: `s2l run` option -> (settings class, field); every other option is in RUN_NOT_SETTINGS
RUN_SETTINGS = {
    **{f: (PrepareSettings, f) for f in PrepareSettings.names() if f != "on_invalid"},
    "skip_invalid": (PrepareSettings, "on_invalid"),
    **{f: (ProxySettings, f) for f in ProxySettings.names() if f != "seed"},
    "lr": (ProxySettings, "learning_rate"),
    "checkpoints": (ProxySettings, "n_checkpoints"),
    "proxy_seed": (ProxySettings, "seed"),
    **{f: (SelectSettings, f) for f in SelectSettings.names()},
    "clusters": (SelectSettings, "n_clusters"),
}
for renamed in ("learning_rate", "n_checkpoints", "n_clusters"):
    del RUN_SETTINGS[renamed]
RUN_NOT_SETTINGS = {"pool", "run_dir", "preset", "force"}


def cli_default(param, field: str):
    """An option's default as the settings spell it (a flag, a budget string)."""
    if param.name == "skip_invalid":
        return "skip" if param.default else "error"
    if field == "budget":
        return parse_budget(param.default)
    return param.default


def test_run_has_an_option_per_setting_with_the_settings_default():
    params = {p.name: p for p in click_command("run").params}
    assert set(params) == set(RUN_SETTINGS) | RUN_NOT_SETTINGS
    covered = {(cls, field) for cls, field in RUN_SETTINGS.values()}
    for cls in (PrepareSettings, ProxySettings, SelectSettings):
        assert {(cls, f) for f in cls.names()} <= covered, cls
    for name, (cls, field) in RUN_SETTINGS.items():
        want = parse_budget(cls.budget) if field == "budget" else getattr(cls, field)
        assert cli_default(params[name], field) == want, name
    assert params["run_dir"].default == DEFAULT_RUN_DIR


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        ("prepare", PrepareSettings),
        ("train-proxy", ProxySettings),
        ("score", ScoreSettings),
        ("select", SelectSettings),
        ("finetune", FinetuneSettings),
        ("evaluate", EvalSettings),
    ],
)
def test_stage_options_default_to_the_stage_settings(command, settings):
    renamed = {"lr": "learning_rate", "checkpoints": "n_checkpoints", "clusters": "n_clusters"}
    checked = 0
    for param in click_command(command).params:
        field = renamed.get(param.name, param.name)
        if field == "run_dir":
            assert param.default == DEFAULT_RUN_DIR
        elif param.name == "skip_invalid" and "on_invalid" in settings.names():
            assert cli_default(param, "on_invalid") == settings.on_invalid
        elif field in settings.names():
            want = parse_budget(settings.budget) if field == "budget" else getattr(settings, field)
            assert cli_default(param, field) == want, f"{command} --{param.name}"
            checked += 1
    assert checked >= 2


def test_run_help_lists_every_stage_option(monkeypatch, capsys):
    code, out, _ = s2l(monkeypatch, capsys, "run", "--help")
    assert code == 0
    for option in (
        "--split",
        "--grad-accum",
        "--warmup-ratio",
        "--score-precision",
        "--dedup",
        "--dedup-threshold",
    ):
        assert option in out
    for precision in PRECISIONS:
        assert precision in out


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "sys.argv = ['s2l', 'run', '--help']\n"
        "from smalltolarge.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_dedup_threshold_alone_is_refused_by_run(monkeypatch, capsys, pool_file, tmp_path):
    run_dir = tmp_path / "r"
    code, _, err = s2l(
        monkeypatch, capsys, "run", pool_file, "-r", run_dir, "--dedup-threshold", "0.5"
    )
    assert_clean_error(code, err, "--dedup-threshold needs --dedup")
    assert not run_dir.exists()


def test_end_to_end_run_then_reuse(monkeypatch, capsys, pool_file, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = s2l(
        monkeypatch, capsys, "run", pool_file, "--run-dir", run_dir, *SMALL_RUN, "--budget", "0.25"
    )
    assert code == 0, err
    assert "selected 30 of 120 examples" in out
    assert "examples per source" in out
    selection = run_dir / "selections" / "s2l-0.25-k6-seed0"
    ids = (selection / "ids.txt").read_text().splitlines()
    assert len(ids) == 30
    assert len((selection / "subset.jsonl").read_text().splitlines()) == 30
    losses = np.load(run_dir / "trajectories" / "losses.npy")
    assert losses.shape[1] == 3 and np.isfinite(losses).all()
    proxy_mtime = (run_dir / "proxy" / "proxy.json").stat().st_mtime_ns

    # a new budget redoes only the selection
    code, out, err = s2l(
        monkeypatch, capsys, "run", pool_file, "--run-dir", run_dir, *SMALL_RUN, "--budget", "12"
    )
    assert code == 0, err
    assert "up to date" in out
    assert (run_dir / "proxy" / "proxy.json").stat().st_mtime_ns == proxy_mtime
    assert len((run_dir / "selections" / "s2l-12-k6-seed0" / "ids.txt").read_text().split()) == 12

    # the stage commands work on the same run directory
    code, out, err = s2l(
        monkeypatch,
        capsys,
        "select",
        "--run-dir",
        run_dir,
        "--method",
        "random",
        "--budget",
        "10%",
        "--seed",
        "3",
    )
    assert code == 0, err
    assert len((run_dir / "selections" / "random-0.1-seed3" / "ids.txt").read_text().split()) == 12


def write_jsonl(path, records, raw_lines=()):
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def good_records(n=20):
    return [{"instruction": f"What is {i} + {i}?", "output": str(2 * i)} for i in range(n)]


def test_malformed_jsonl_line_names_file_and_line(monkeypatch, capsys, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", good_records(2), ['{"instruction": "x", '])
    code, _, err = s2l(monkeypatch, capsys, "run", pool, "--run-dir", tmp_path / "r")
    assert_clean_error(code, err, "pool.jsonl line 3")
    assert not (tmp_path / "r" / "proxy").exists()


def test_missing_field(monkeypatch, capsys, tmp_path):
    records = good_records(5)
    del records[3]["output"]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    code, _, err = s2l(monkeypatch, capsys, "prepare", pool, "--run-dir", tmp_path / "r")
    assert_clean_error(code, err, "line 4", "missing field 'output'")


def test_empty_response(monkeypatch, capsys, tmp_path):
    records = good_records(5)
    records[1]["output"] = "   "
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    code, _, err = s2l(monkeypatch, capsys, "run", pool, "--run-dir", tmp_path / "r")
    assert_clean_error(code, err, "line 2", "empty response")
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "proxy").exists()


def test_skip_invalid_drops_and_reports(monkeypatch, capsys, tmp_path):
    records = good_records(5)
    records[1]["output"] = ""
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    code, out, err = s2l(
        monkeypatch, capsys, "prepare", pool, "--run-dir", tmp_path / "r", "--skip-invalid"
    )
    assert code == 0, err
    assert "skipped 1 invalid examples" in out
    assert "4 scorable examples" in out


@pytest.mark.parametrize("budget", ["0", "-5", "21", "1.5"])
def test_bad_budget_is_refused_before_training(monkeypatch, capsys, tmp_path, budget):
    pool = write_jsonl(tmp_path / "pool.jsonl", good_records(20))
    code, _, err = s2l(
        monkeypatch, capsys, "run", pool, "--run-dir", tmp_path / "r", "--budget", budget
    )
    assert_clean_error(code, err, "budget")
    assert not (tmp_path / "r" / "proxy").exists()


def test_trajectories_of_another_pool_are_refused(
    monkeypatch, capsys, pool_file, run_copy, tmp_path
):
    edited = tmp_path / "edited.jsonl"
    text = pool_file.read_text()
    edited.write_text(text.replace('"output":"', '"output":"Edited. ', 1))
    code, _, err = s2l(
        monkeypatch, capsys, "prepare", edited, "--run-dir", run_copy.root, "--max-length", "128"
    )
    assert code == 0, err
    code, _, err = s2l(monkeypatch, capsys, "select", "--run-dir", run_copy.root)
    assert_clean_error(code, err, "different pool")


def test_unknown_method_and_missing_run(monkeypatch, capsys, run_copy, tmp_path):
    code, _, err = s2l(
        monkeypatch, capsys, "select", "--run-dir", run_copy.root, "--method", "magic"
    )
    assert_clean_error(code, err, "unknown selection method 'magic'")
    code, _, err = s2l(monkeypatch, capsys, "score", "--run-dir", tmp_path / "nothing")
    assert_clean_error(code, err, "s2l prepare")


def test_method_setting_reaches_the_method(monkeypatch, capsys, run_copy):
    code, out, err = s2l(
        monkeypatch, capsys, "select", "-r", str(run_copy.root), "--method", "s2l-cut",
        "--budget", "0.2", "--method-setting", "cut_fraction=0.25", "--stratify-by", "source",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(
        next((run_copy.root / "selections").glob("s2l-cut-*/summary.json")).read_text()
    )
    assert summary["settings"]["cut_fraction"] == 0.25
    code, _, err = s2l(
        monkeypatch, capsys, "select", "-r", str(run_copy.root), "--method", "random",
        "--method-setting", "cut_fraction=0.25",
    )  # fmt: skip
    assert_clean_error(code, err, "does not take cut_fraction")
    code, _, err = s2l(
        monkeypatch, capsys, "select", "-r", str(run_copy.root), "--method-setting", "nope"
    )
    assert_clean_error(code, err, "--method-setting 'nope': give KEY=VALUE")
