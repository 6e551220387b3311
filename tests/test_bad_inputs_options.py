"""Bad-input corpus, issue 23 item 1: no option is dropped without a word.

Every option of ``s2l select``, ``run``, ``prepare`` and ``train-proxy`` has a row in its
command's table (:mod:`smalltolarge.cli.modes`) saying in which modes it takes effect. These
tests check that the tables cover every option (a new option fails here until its row is
written), that every option given where its row says it means nothing is refused with a
message naming it, and that everywhere else its value reaches the stage it sets. The reported
cases (nested budgets with a preset or a target set, a target weight alone) are run for real.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import typer

from smalltolarge.cli import app
from smalltolarge.cli.modes import EVERYWHERE, PER_SOURCE, TABLES
from smalltolarge.errors import S2LError
from tests.test_bad_inputs import refused, s2l

#: Each option of each command: its command-line arguments (None: a mode's own switch, given
#: by the mode) and the value the stage must receive, by the stage's parameter name.
SAMPLES: dict[str, dict[str, tuple[list[str], str, object]]] = {
    "select": {
        "run_dir": (["-r", "RUN"], "run_dir", "RUN"),
        "method": (["--method", "random"], "method", "random"),
        "budget": (["--budget", "7"], "budget", "7"),
        "clusters": (["--clusters", "5"], "n_clusters", 5),
        "stratify_by": (["--stratify-by", "source"], "stratify_by", "source"),
        "seed": (["--seed", "3"], "seed", 3),
        "name": (["--name", "nm"], "name", "nm"),
        "trajectories": (["--trajectories", "t.npy"], "trajectories", Path("t.npy")),
        "trajectory_ids": (["--trajectory-ids", "i.txt"], "trajectory_ids", Path("i.txt")),
        "pool": (["--pool", "p.jsonl"], "pool", "p.jsonl"),
        "outlier_max_size": (["--outlier-max-size", "4"], "outlier_max_size", 4),
        "target_set": (["--target-set", "aim.jsonl"], "target_set", "aim.jsonl"),
        "target_weight": (["--target-weight", "0.9"], "target_weight", 0.9),
        "method_setting": (["--method-setting", "n_iter=7"], "n_iter", 7),
        "force": (["--force"], "force", True),
        "preset": (["--preset", "reference"], "preset", "reference"),
        "report": (["--report"], "", None),  # the command writes it after the selection
    },
    "run": {
        "pool": (["POOL.jsonl"], "pool_path", "POOL.jsonl"),
        "run_dir": (["-r", "RUN"], "run_dir", "RUN"),
        "proxy": (["--proxy", "small"], "proxy", "small"),
        "template": (["--template", "chat"], "template", "chat"),
        "max_length": (["--max-length", "99"], "max_length", 99),
        "prompt_column": (["--prompt-column", "q"], "prompt_column", "q"),
        "input_column": (["--input-column", "x"], "input_column", "x"),
        "response_column": (["--response-column", "a"], "response_column", "a"),
        "source_column": (["--source-column", "src"], "source_column", "src"),
        "id_column": (["--id-column", "key"], "id_column", "key"),
        "split": (["--split", "test"], "split", "test"),
        "skip_invalid": (["--skip-invalid"], "on_invalid", "skip"),
        "dedup": (["--dedup", "prompt"], "dedup", "prompt"),
        "dedup_threshold": (["--dedup-threshold", "0.7"], "dedup_threshold", 0.7),
        "assistant_turns": (["--assistant-turns", "last"], "assistant_turns", "last"),
        "epochs": (["--epochs", "2.5"], "epochs", 2.5),
        "lr": (["--lr", "0.001"], "learning_rate", 0.001),
        "batch_size": (["--batch-size", "6"], "batch_size", 6),
        "grad_accum": (["--grad-accum", "2"], "grad_accum", 2),
        "warmup_ratio": (["--warmup-ratio", "0.1"], "warmup_ratio", 0.1),
        "checkpoints": (["--checkpoints", "5"], "n_checkpoints", 5),
        "checkpoint_every": (["--checkpoint-every", "11"], "checkpoint_every", 11),
        "precision": (["--precision", "fp32"], "precision", "fp32"),
        "score_precision": (["--score-precision", "bf16"], "score_precision", "bf16"),
        "max_tokens": (["--max-tokens", "999"], "max_tokens", 999),
        "method": (["--method", "random"], "method", "random"),
        "budget": (["--budget", "17"], "budget", "17"),
        "clusters": (["--clusters", "13"], "n_clusters", 13),
        "stratify_by": (["--stratify-by", "source"], "stratify_by", "source"),
        "target_set": (["--target-set", "aim.jsonl"], "target_set", "aim.jsonl"),
        "target_weight": (["--target-weight", "0.9"], "target_weight", 0.9),
        "seed": (["--seed", "3"], "seed", 3),
        "proxy_seed": (["--proxy-seed", "8"], "proxy_seed", 8),
        "preset": (["--preset", "reference"], "preset", "reference"),
        "force": (["--force"], "force", True),
    },
    "prepare": {
        "pool": (["POOL.jsonl"], "pool_path", "POOL.jsonl"),
        "run_dir": (["-r", "RUN"], "run_dir", "RUN"),
        "proxy": (["--proxy", "small"], "proxy", "small"),
        "template": (["--template", "chat"], "template", "chat"),
        "max_length": (["--max-length", "99"], "max_length", 99),
        "prompt_column": (["--prompt-column", "q"], "prompt_column", "q"),
        "input_column": (["--input-column", "x"], "input_column", "x"),
        "response_column": (["--response-column", "a"], "response_column", "a"),
        "source_column": (["--source-column", "src"], "source_column", "src"),
        "id_column": (["--id-column", "key"], "id_column", "key"),
        "split": (["--split", "test"], "split", "test"),
        "skip_invalid": (["--skip-invalid"], "on_invalid", "skip"),
        "preset": (["--preset", "reference"], "preset", "reference"),
        "dedup": (["--dedup", "prompt"], "dedup", "prompt"),
        "dedup_threshold": (["--dedup-threshold", "0.7"], "dedup_threshold", 0.7),
        "assistant_turns": (["--assistant-turns", "last"], "assistant_turns", "last"),
    },
    "train-proxy": {
        "run_dir": (["-r", "RUN"], "run_dir", "RUN"),
        "epochs": (["--epochs", "2.5"], "epochs", 2.5),
        "lr": (["--lr", "0.001"], "learning_rate", 0.001),
        "batch_size": (["--batch-size", "6"], "batch_size", 6),
        "grad_accum": (["--grad-accum", "2"], "grad_accum", 2),
        "warmup_ratio": (["--warmup-ratio", "0.1"], "warmup_ratio", 0.1),
        "checkpoints": (["--checkpoints", "5"], "n_checkpoints", 5),
        "checkpoint_every": (["--checkpoint-every", "11"], "checkpoint_every", 11),
        "seed": (["--seed", "3"], "seed", 3),
        "precision": (["--precision", "fp32"], "precision", "fp32"),
        "save_checkpoints": (["--no-save-checkpoints"], "save_checkpoints", False),
        "record": (["--record"], "record", True),
        "score_precision": (["--score-precision", "bf16"], "score_precision", "bf16"),
        "max_tokens": (["--max-tokens", "999"], "max_tokens", 999),
        "force": (["--force"], "force", True),
        "preset": (["--preset", "reference"], "preset", "reference"),
    },
}

#: Each mode: the arguments that turn it on, and the options that are its own switch.
MODES: dict[str, dict[str, tuple[list[str], set[str]]]] = {
    "select": {
        "single": ([], set()),
        "nested": (["--budget", "0.1,0.3"], {"budget"}),
        PER_SOURCE: (["--stratify-by", "source"], {"stratify_by"}),
        "imported": (["--trajectories", "t.npy"], {"trajectories"}),
    },
    "run": {"global": ([], set()), PER_SOURCE: (["--stratify-by", "source"], {"stratify_by"})},
    "prepare": {"prepare": ([], set())},
    "train-proxy": {"recording": ([], set()), "not-recording": (["--no-record"], {"record"})},
}

#: The stage each command hands its options to (module, function), and the argument the
#: command always needs.
STAGES = {
    "select": ("smalltolarge.subset", "select_subset"),
    "run": ("smalltolarge.pipeline", "run_pipeline"),
    "prepare": ("smalltolarge.prepare", "prepare"),
    "train-proxy": ("smalltolarge.proxy", "train_proxy"),
}
NESTED_STAGE = ("smalltolarge.nested", "select_nested")
NEEDS_ARGUMENT = {"run": ["POOL.jsonl"], "prepare": ["POOL.jsonl"]}


def command_params(name: str) -> list[str]:
    return [p.name for p in typer.main.get_command(app).commands[name].params]


def test_every_option_of_these_commands_has_a_row_and_a_sample():
    assert {"select", "run"} <= set(TABLES)
    for name, table in TABLES.items():
        params = command_params(name)
        missing = [p for p in params if p not in table.options]
        assert not missing, (
            f"s2l {name}: options {missing} have no row in smalltolarge.cli.modes: decide in "
            "which modes each takes effect"
        )
        assert not set(table.options) - set(params), f"s2l {name}: rows for no option"
        assert set(SAMPLES[name]) == set(params), f"s2l {name}: give each option a sample here"
        assert set(MODES[name]) == set(table.modes), f"s2l {name}: say how to turn each mode on"


def active_modes(command: str, mode: str, option: str) -> set[str]:
    """The modes the command is in with ``mode`` turned on and ``option`` (and what it
    needs) given with its sample."""
    table = TABLES[command]
    given = {option, table.options[option].needs} - {None}
    active = {mode}
    if command == "select":
        active.add("nested" if mode == "nested" else "single")
        if "trajectories" in given:
            active.add("imported")
    if given & {"stratify_by", "preset"} and PER_SOURCE in table.modes:  # preset reference
        active = (active - {"global"}) | {PER_SOURCE}
    return active


def cases() -> list[tuple[str, str, str]]:
    return [
        (command, option, mode)
        for command, table in TABLES.items()
        for option in table.options
        for mode in table.modes
        if option not in MODES[command][mode][1]
    ]


def arguments(command: str, *options: str, mode: str | None = None) -> list[str]:
    """The command line with ``mode`` turned on and each of ``options`` given its sample."""
    args = list(MODES[command][mode][0]) if mode else []
    for name in options:
        args += SAMPLES[command][name][0]
    if "pool" not in options:
        args = NEEDS_ARGUMENT.get(command, []) + args
    return args


def expected_refusal(command: str, option: str, mode: str) -> list[str]:
    """The options (the given one, or the one it needs) one of which the refusal must
    name; none when nothing is refused."""
    table = TABLES[command]
    active = active_modes(command, mode, option)
    return [
        name
        for name in (table.options[option].needs, option)
        if name is not None and not active <= table.applies(name)
    ]


def flag(command: str, option: str) -> str:
    param = next(
        p for p in typer.main.get_command(app).commands[command].params if p.name == option
    )
    return next((o for o in param.opts if o.startswith("--")), option.upper())


class Reached(Exception):
    """The stage was called: what it received is in ``bound``."""

    def __init__(self, bound: dict):
        self.bound = bound


def recorder(real):
    signature = inspect.signature(real)

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        bound.update(bound.pop("settings", None) or {})  # run_pipeline's **, select's dict
        raise Reached(bound)

    return record


@pytest.mark.parametrize(("command", "option", "mode"), cases())
def test_each_option_takes_effect_or_is_refused_in_each_mode(
    monkeypatch, capsys, tmp_path, command, option, mode
):
    import importlib

    monkeypatch.chdir(tmp_path)
    for module, function in (STAGES[command], NESTED_STAGE):
        real = getattr(importlib.import_module(module), function)
        monkeypatch.setattr(f"{module}.{function}", recorder(real))
    needs = TABLES[command].options[option].needs
    args = arguments(command, *([needs] if needs else []), option, mode=mode)
    if option == "method" and mode == "nested":  # nested budgets are s2l's only
        args[args.index("random")] = "s2l"
    expected = expected_refusal(command, option, mode)
    if expected:
        code, _, err = s2l(monkeypatch, capsys, command, *args)
        refused(code, err, "does not apply to")
        assert any(flag(command, n) in err for n in expected), (expected, err)
        return
    with pytest.raises(Reached) as reached:
        s2l(monkeypatch, capsys, command, *args)
    _, stage_name, value = SAMPLES[command][option]
    if not stage_name or (option == "method" and mode == "nested"):
        return  # said above why these reach no stage argument
    bound = reached.value.bound
    assert stage_name in bound, (option, sorted(bound))
    got = bound[stage_name]
    if stage_name == "run_dir":
        got = Path(str(got)).name
    assert got == value, (option, got, value)


@pytest.mark.parametrize(
    ("command", "option"),
    [(c, o) for c, t in TABLES.items() for o, u in t.options.items() if u.needs or u.excludes],
)
def test_an_option_without_what_it_needs_or_with_what_it_excludes(
    monkeypatch, capsys, tmp_path, command, option
):
    monkeypatch.chdir(tmp_path)
    u = TABLES[command].options[option]
    if u.needs:
        code, _, err = s2l(monkeypatch, capsys, command, *arguments(command, option))
        refused(code, err, f"{flag(command, option)} needs {flag(command, u.needs)}")
    if u.excludes:
        args = arguments(command, option, u.excludes)
        code, _, err = s2l(monkeypatch, capsys, command, *args)
        refused(code, err, f"{flag(command, option)} and {flag(command, u.excludes)} together")
    assert not any(tmp_path.iterdir())


# ---- the reported cases, for real -------------------------------------------------------


def test_nested_budgets_with_the_reference_preset_select_as_the_preset_says(
    monkeypatch, capsys, run_copy
):
    code, out, err = s2l(
        monkeypatch, capsys, "select", "-r", run_copy.root, "--budget", "0.1,0.3",
        "--preset", "reference", "--clusters", "3",
    )  # fmt: skip
    assert code == 0, err
    made = sorted(p.name for p in run_copy.selections_dir.iterdir())
    assert made == [
        "s2l-nested-reference-stratified-seed0-0.1",
        "s2l-nested-reference-stratified-seed0-0.3",
    ]
    summary = json.loads((run_copy.selections_dir / made[0] / "summary.json").read_text())
    assert summary["preset"] == "reference"
    assert summary["settings"]["outlier_max_size"] == 2
    assert "sources" in summary


@pytest.mark.parametrize("extra", [["--target-set", "EMPTY"], ["--preset", "default"]])
def test_nested_budgets_refuse_or_honour_every_option(monkeypatch, capsys, run_copy, extra):
    empty = run_copy.root.parent / "empty.jsonl"
    empty.write_text("")
    extra = [str(empty) if a == "EMPTY" else a for a in extra]
    code, _, err = s2l(
        monkeypatch, capsys, "select", "-r", run_copy.root, "--budget", "0.1,0.3", *extra
    )
    if extra[0] == "--target-set":
        refused(code, err, "--target-set", "nested budgets")
        assert not run_copy.selections_dir.exists()
    else:
        assert code == 0, err


def test_a_target_weight_alone_is_refused(monkeypatch, capsys, run_copy):
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root, "--target-weight", "1")
    refused(code, err, "--target-weight needs --target-set")
    with pytest.raises(S2LError, match="target_weight 0.9 means nothing without target_set"):
        from smalltolarge.subset import select_subset

        select_subset(run_copy, target_weight=0.9)


def test_the_api_refuses_what_it_would_ignore(run_copy, tmp_path):
    from smalltolarge.subset import select_subset

    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    with pytest.raises(S2LError, match="trajectory_ids goes with imported trajectories"):
        select_subset(run_copy, trajectory_ids=ids)
    with pytest.raises(S2LError, match="pool goes with imported trajectories"):
        select_subset(run_copy, pool=tmp_path / "p.jsonl")
    with pytest.raises(S2LError, match="cannot steer a selection made on imported"):
        select_subset(run_copy, target_set=ids, trajectories=tmp_path / "t.npy")
    assert not run_copy.selections_dir.exists()


def test_nested_budgets_reuse_and_never_replace_other_settings_silently(
    monkeypatch, capsys, run_copy
):
    base = ["select", "-r", run_copy.root, "--budget", "0.1,0.2", "--name", "x"]
    code, _, err = s2l(monkeypatch, capsys, *base, "--clusters", "3")
    assert code == 0, err
    ids = (run_copy.selections_dir / "x-0.1" / "ids.txt").read_text()
    mtime = (run_copy.selections_dir / "x-0.1" / "summary.json").stat().st_mtime_ns
    code, _, err = s2l(monkeypatch, capsys, *base, "--clusters", "3")  # reused, not redone
    assert code == 0, err
    assert (run_copy.selections_dir / "x-0.1" / "summary.json").stat().st_mtime_ns == mtime
    code, _, err = s2l(monkeypatch, capsys, *base, "--clusters", "4")
    refused(code, err, "other settings", "--force")
    assert (run_copy.selections_dir / "x-0.1" / "ids.txt").read_text() == ids
    code, _, err = s2l(monkeypatch, capsys, *base, "--clusters", "4", "--force")
    assert code == 0, err
    summary = json.loads((run_copy.selections_dir / "x-0.1" / "summary.json").read_text())
    assert summary["settings"]["n_clusters"] == 4


def test_run_refuses_a_misplaced_target_set_before_training(monkeypatch, capsys, pool_file):
    from smalltolarge.pipeline import run_pipeline

    run_dir = pool_file.parent / "never"
    with pytest.raises(S2LError, match="target set steers plain S2L"):
        run_pipeline(pool_file, run_dir, method="random", target_set=str(pool_file))
    assert not run_dir.exists()


def test_everywhere_means_every_mode():
    for table in TABLES.values():
        for name, u in table.options.items():
            if EVERYWHERE in u.modes:
                assert table.applies(name) == frozenset(table.modes)
