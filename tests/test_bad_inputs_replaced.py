"""Regression corpus of issue 23: nothing replaced, ignored or dropped without a word.

Like ``tests/test_bad_inputs.py`` (whose helpers it uses), each case runs the ``s2l`` command
in-process and checks the exit status, the words the message must contain, and that what was
on disk is still there when a command refuses: a complete selection is never replaced in place
(and what was derived from it never outlives it), an extension is read in the run's own
schema, a message offers only options its command has, and scoring scores every checkpoint the
proxy recorded or none.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from smalltolarge.runs import read_json
from tests.test_bad_inputs import refused, s2l


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


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
