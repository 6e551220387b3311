"""The ``smalltolarge`` command, ``s2l`` for short: one sub-command per stage, each a thin
layer over the Python API.

The commands live by theme: :mod:`~smalltolarge.cli.stages` (prepare, dedup, train-proxy,
score, select, run, demo), :mod:`~smalltolarge.cli.target` (finetune, evaluate, experiment,
curve) and :mod:`~smalltolarge.cli.tools` (truncate-model, init-model, report, export,
estimate); the options they share are in :mod:`~smalltolarge.cli.options`, with their defaults
taken from :mod:`smalltolarge.settings`. Importing this package registers every command on
:data:`app`, and imports no torch or transformers (``s2l --help`` stays fast).

Input problems (:class:`~smalltolarge.errors.S2LError`) are printed as one line on stderr with
exit status 2, no traceback, as click prints its usage errors. Ctrl-C ends a command with one
line saying how to resume, and exit status 130.
"""

from __future__ import annotations

import sys
import time

import typer

from smalltolarge.cli import stages, target, tools  # noqa: F401  (they register the commands)
from smalltolarge.cli.common import Interrupted, app
from smalltolarge.errors import S2LError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``smalltolarge`` and ``s2l`` console commands (one command, two
    names; see README, *Install*)."""
    started = time.perf_counter()
    try:
        app()
    except S2LError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        typer.echo(interrupted_message(time.perf_counter() - started, e), err=True)
        sys.exit(130)


def interrupted_message(seconds: float, interrupt: BaseException) -> str:
    """What Ctrl-C prints: every stage resumes from the work it finished, but ``--force``
    given again would redo that work."""
    head = f"interrupted after {seconds:.0f}s; "
    if getattr(interrupt, "forced", False):
        return head + "drop --force to resume; with it, the work done so far is redone"
    return head + "re-run the same command to resume"
