"""Bad-input corpus, issue 23 item 3: Ctrl-C says how to resume.

typer turned a KeyboardInterrupt into a bare exit 130 before ``s2l``'s own handler could say
"interrupted after Ns; re-run the same command to resume". The message now appears, with exit
status 130; with ``--force`` it says that a re-run with it redoes the work done so far.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from smalltolarge.cli import main


def test_sigint_during_scoring_says_how_to_resume(run_copy):
    parts = run_copy.trajectories_dir / "parts"
    args = [
        sys.executable, "-m", "smalltolarge.cli", "score", "--run-dir", str(run_copy.root),
        "--precision", "fp32", "--chunk-tokens", "600", "--max-tokens", "64", "--force",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    victim = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a SIGINT ignored by whoever started the tests would be ignored here too
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        if parts.is_dir() and any(parts.glob("step-*/chunk-*[0-9].npy")):
            break  # inside the command, scoring
        time.sleep(0.02)
    assert victim.poll() is None, "scoring finished before it could be interrupted"
    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted after ") and last.split()[2].endswith("s;"), last
    assert "drop --force to resume" in last and "redone" in last, last


@pytest.mark.parametrize(("force", "said"), [([], "re-run the same command to resume"),
                                             (["--force"], "drop --force to resume")])  # fmt: skip
def test_ctrl_c_in_a_command_without_and_with_force(monkeypatch, capsys, run_copy, force, said):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("smalltolarge.subset.select_subset", interrupted)
    monkeypatch.setattr(sys, "argv", ["s2l", "select", "-r", str(run_copy.root), *force])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted after ") and said in err, err
    if not force:
        assert "--force" not in err


def test_usage_errors_keep_their_status(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["s2l", "select", "--no-such-option"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "No such option" in capsys.readouterr().err
