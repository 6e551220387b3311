"""Regression corpus of issue 23: nothing replaced, ignored or dropped without a word.

Like ``tests/test_bad_inputs.py`` (whose helpers it uses), each case runs the ``s2l`` command
in-process and checks the exit status, the words the message must contain, and that what was
on disk is still there when a command refuses: a complete selection is never replaced in place
(and what was derived from it never outlives it), an extension is read in the run's own
schema, a message offers only options its command has, and scoring scores every checkpoint the
proxy recorded or none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smalltolarge.demo_data import DEMO_POOL
from smalltolarge.export import export_selection
from smalltolarge.extend import extend_run
from smalltolarge.html_report import write_report
from smalltolarge.nested import select_nested
from smalltolarge.runs import RunDir, read_json
from smalltolarge.subset import select_subset
from tests.conftest import N_POOL
from tests.test_bad_inputs import refused, s2l

N_NEW = 30
SELECTION = "s2l-0.3-seed0"


def demo_lines(start: int, stop: int) -> list[str]:
    """Lines ``start:stop`` of the bundled pool (past ``N_POOL``: not in the fixture pool)."""
    return DEMO_POOL.read_text(encoding="utf-8").splitlines()[start:stop]


@pytest.fixture(scope="module")
def new_file(tmp_path_factory) -> Path:
    """``N_NEW`` bundled examples that are not in the fixture pool (the run's schema)."""
    path = tmp_path_factory.mktemp("new") / "new.jsonl"
    path.write_text("\n".join(demo_lines(N_POOL, N_POOL + N_NEW)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory, scored_run, new_file) -> RunDir:
    """The scored run with the selection ``s2l-0.3-seed0`` (exported as alpaca, reported) and
    the nested selections ``s2l-nested-seed0-{0.1,0.3}``, then grown by an extension of
    ``s2l-0.3-seed0`` (``s2l-0.3-seed0-ext1``): every selection was made on the old pool."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "grown")
    shutil.copytree(scored_run.root, run.root)
    select_subset(run, budget=0.3, seed=0)
    select_nested(run, ["0.1", "0.3"])
    export_selection(run.selection_dir(SELECTION), "alpaca")
    write_report(run, SELECTION)
    extend_run(run, new_file, selection=SELECTION, progress=False)
    return run


@pytest.fixture
def grown(tmp_path, grown_run) -> RunDir:
    """A private, writable copy of ``grown_run``."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(grown_run.root, run.root)
    return run


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


# ---- a complete selection is never replaced in place -------------------------------------


def test_select_after_extend_keeps_the_selection_and_force_takes_what_it_derived(
    monkeypatch, capsys, grown
):
    root, sel = grown.root, grown.selection_dir(SELECTION)
    before = files_of(sel)
    old = read_json(sel / "summary.json")
    assert (sel / "export").is_dir() and (sel / "report").is_dir()

    # the same settings on the grown pool: refused, saying what changed and what to run
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--budget", "0.3")
    refused(
        code, err, str(sel), "pool fingerprint", "trajectories fingerprint", "--name NEW_NAME",
        "--force", "export/", "report/",
    )  # fmt: skip
    assert files_of(sel) == before

    # --name makes a new selection beside it
    code, _, err = s2l(
        monkeypatch, capsys, "select", "-r", root, "--budget", "0.3", "--name", "grown-0.3"
    )
    assert code == 0, err
    assert files_of(sel) == before

    # --force replaces it, and what was derived from it goes in the same step
    code, out, err = s2l(monkeypatch, capsys, "select", "-r", root, "--budget", "0.3", "--force")
    assert code == 0, err
    assert not (sel / "export").exists() and not (sel / "report").exists()
    new = read_json(sel / "summary.json")
    assert new["fingerprint"] != old["fingerprint"]
    assert new["replaced"]["fingerprint"] == old["fingerprint"]
    assert new["replaced"]["n_selected"] == old["n_selected"]
    assert new["replaced"]["removed"] == ["export/", "report/"]
    assert "replaced" in out and "export/" in out

    # the extension still names the selection it grew, by fingerprint: not the new one
    ext = read_json(grown.selection_dir(f"{SELECTION}-ext1") / "summary.json")
    assert ext["extended_from"]["selection"] == SELECTION
    assert ext["extended_from"]["fingerprint"] == old["fingerprint"]
    record = read_json(grown.extensions_meta)["extensions"][0]
    assert record["selection"] == f"{SELECTION}-ext1"
    assert record["selection_fingerprint"] == ext["fingerprint"]


def test_derived_outputs_name_their_selection_and_a_stale_export_is_refused(
    monkeypatch, capsys, grown, tmp_path
):
    root, sel = grown.root, grown.selection_dir(SELECTION)
    fp = read_json(sel / "summary.json")["fingerprint"]
    assert read_json(sel / "report" / "report.json")["selection_fingerprint"] == fp
    exported = read_json(sel / "export" / "alpaca" / "export.json")
    assert exported[f"{SELECTION}.json"]["selection_fingerprint"] == fp

    out = tmp_path / "out"
    code, _, err = s2l(monkeypatch, capsys, "export", sel, "--format", "alpaca", "-o", out)
    assert code == 0, err
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--budget", "0.3", "--force")
    assert code == 0, err
    # the copy outside the selection outlived it: a reader refuses it rather than trust it
    code, _, err = s2l(
        monkeypatch, capsys, "finetune", "tiny", out / f"{SELECTION}.json", "-o", tmp_path / "ft"
    )
    refused(code, err, str(out / f"{SELECTION}.json"), fp, "replaced", "s2l export")
    assert not (tmp_path / "ft").exists()


def test_nested_selections_are_kept_too(monkeypatch, capsys, grown):
    root = grown.root
    nested = [grown.selection_dir(f"s2l-nested-seed0-{b}") for b in ("0.1", "0.3")]
    before = [files_of(d) for d in nested]
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--budget", "0.1,0.3")
    refused(code, err, str(nested[0]), "trajectories fingerprint", "--name", "--force")
    assert [files_of(d) for d in nested] == before
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--budget", "0.1,0.3", "--force")
    assert code == 0, err
    assert all(read_json(d / "summary.json")["replaced"] for d in nested)
    # other nested budgets rank the examples otherwise: the smaller selection is not redone
    before = files_of(nested[0])
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", root, "--budget", "0.1,0.5")
    refused(code, err, str(nested[0]), "other settings", "nested '0.1,0.3' there, '0.1,0.5' now")
    assert files_of(nested[0]) == before


def test_extend_never_writes_over_a_complete_selection(monkeypatch, capsys, run_copy, new_file):
    root = run_copy.root
    select_subset(run_copy, budget=0.3, seed=0)
    # a selection of the user's that happens to bear the name the extension would take
    taken = run_copy.selection_dir(f"{SELECTION}-ext1")
    select_subset(run_copy, method="random", budget=0.1, name=taken.name)
    before, pool_meta = files_of(taken), run_copy.pool_meta.read_bytes()
    code, _, err = s2l(monkeypatch, capsys, "extend", root, new_file, "--selection", SELECTION)
    refused(code, err, str(taken))
    assert files_of(taken) == before
    assert run_copy.pool_meta.read_bytes() == pool_meta
    assert not run_copy.extensions_meta.exists()


# ---- extend reads the run's schema -------------------------------------------------------


def qa_file(tmp_path: Path, *, source: bool = True) -> Path:
    """The new examples as question/answer records (another schema than the run's alpaca)."""
    path = tmp_path / "qa.jsonl"
    rows = []
    for line in demo_lines(N_POOL, N_POOL + N_NEW):
        r = json.loads(line)
        row = {"id": r["id"], "question": r["instruction"], "answer": r["output"]}
        rows.append({**row, **({"source": r["source"]} if source else {})})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_extend_refuses_another_schema_before_any_work(monkeypatch, capsys, run_copy, tmp_path):
    root, qa = run_copy.root, qa_file(tmp_path)
    pool_meta = run_copy.pool_meta.read_bytes()
    code, _, err = s2l(monkeypatch, capsys, "extend", root, qa)
    refused(code, err, str(qa), "alpaca", "'instruction'", "'output'", "question", "answer")
    # mapping the other columns by hand is refused too: the grown pool keeps one schema
    code, _, err = s2l(
        monkeypatch, capsys, "extend", root, qa,
        "--prompt-column", "question", "--response-column", "answer",
    )  # fmt: skip
    refused(code, err, str(qa), "--prompt-column question", "'instruction'")
    # the run's columns, but no source column: the new examples' source would be ""
    no_source = tmp_path / "no_source.jsonl"
    no_source.write_text(
        "".join(
            json.dumps({k: v for k, v in json.loads(line).items() if k != "source"}) + "\n"
            for line in demo_lines(N_POOL, N_POOL + N_NEW)
        ),
        encoding="utf-8",
    )
    code, _, err = s2l(monkeypatch, capsys, "extend", root, no_source)
    refused(code, err, str(no_source), "'source'")
    assert run_copy.pool_meta.read_bytes() == pool_meta
    assert not run_copy.extensions_meta.exists()


def test_no_message_offers_an_option_its_command_lacks(monkeypatch, capsys, run_copy, tmp_path):
    sel = select_subset(run_copy, budget=0.3, seed=0).directory
    lines = (sel / "subset.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["output"] = None
    (sel / "subset.jsonl").write_text(
        "\n".join([json.dumps(first), *lines[1:]]) + "\n", encoding="utf-8"
    )
    # export has no --skip-invalid
    code, _, err = s2l(monkeypatch, capsys, "export", sel, "--format", "alpaca")
    refused(code, err, "invalid", "fix them")
    assert "--skip-invalid" not in err
    # finetune has it
    code, _, err = s2l(monkeypatch, capsys, "finetune", "tiny", sel, "-o", tmp_path / "ft")
    refused(code, err, "invalid", "--skip-invalid")
    # select has none; the target set is not the pool --skip-invalid would apply to in `run`
    bad = tmp_path / "target.jsonl"
    bad.write_text(json.dumps(first) + "\n", encoding="utf-8")
    code, _, err = s2l(monkeypatch, capsys, "select", "-r", run_copy.root, "--target-set", bad)
    refused(code, err, "invalid", "fix them")
    assert "--skip-invalid" not in err


# ---- scoring scores every recorded checkpoint or none ------------------------------------


def test_score_refuses_a_missing_checkpoint(monkeypatch, capsys, run_copy):
    root = run_copy.root
    steps = read_json(run_copy.proxy_meta)["checkpoint_steps"]
    gone = run_copy.proxy_dir / f"step-{steps[1]:08d}"
    shutil.rmtree(gone)
    traj = files_of(run_copy.trajectories_dir)
    code, _, err = s2l(monkeypatch, capsys, "score", "-r", root, "--force")
    refused(code, err, f"step {steps[1]}", str(gone), "`s2l train-proxy --force`")
    assert files_of(run_copy.trajectories_dir) == traj
    # without --force, when the trajectories are to be scored
    shutil.rmtree(run_copy.trajectories_dir)
    code, _, err = s2l(monkeypatch, capsys, "score", "-r", root)
    refused(code, err, f"step {steps[1]}", str(gone))
    assert not run_copy.trajectories_dir.exists()
