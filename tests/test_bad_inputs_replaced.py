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

from smalltolarge.demo_data import DEMO_POOL
from smalltolarge.runs import read_json
from smalltolarge.subset import select_subset
from tests.conftest import N_POOL
from tests.test_bad_inputs import refused, s2l

N_NEW = 30


def demo_lines(start: int, stop: int) -> list[str]:
    """Lines ``start:stop`` of the bundled pool (past ``N_POOL``: not in the fixture pool)."""
    return DEMO_POOL.read_text(encoding="utf-8").splitlines()[start:stop]


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


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
