"""The ``s2l`` (``smalltolarge``) application object, how a command registers on it, and the
output pieces several commands print (a run's paths, a selection's report)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from smalltolarge.errors import InvalidExamplesError, S2LError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="s2l",
    help="S2L (SmallToLarge) data selection: train a small proxy on your SFT pool, record every "
    "example's loss trajectory, cluster the trajectories and pick a balanced subset.\n\n"
    "Stages: prepare -> train-proxy -> score -> select; `run` chains them, `demo` runs them on "
    "the bundled pool. Then finetune and evaluate the target on a selection, and `experiment` "
    "compares methods at equal budgets.\n\n"
    "`smalltolarge` and `s2l` are the same command (`python -m smalltolarge` too); help and "
    "messages write `s2l`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Interrupted(Exception):
    """Ctrl-C inside a command. typer turns a KeyboardInterrupt into a silent exit 130 before
    :func:`smalltolarge.cli.main` sees it; this one passes through typer, so ``main`` can say
    how to resume. ``forced``: the command was given ``--force``, which a re-run would obey
    again, redoing the work done so far."""

    def __init__(self, forced: bool):
        super().__init__("interrupted")
        self.forced = forced


def command(name: str) -> Callable[[F], F]:
    """Register the decorated function as ``s2l NAME``. The libraries' own bars and logs are
    silenced when the command runs, not before: ``--help`` imports no transformers. Invalid
    examples are reported with ``--skip-invalid`` as the way to drop them only by a command
    that has that option, and only for the input it applies to. Ctrl-C while it runs becomes
    :class:`Interrupted`."""

    def register(function: F) -> F:
        has_skip = "skip_invalid" in inspect.signature(function).parameters

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                quiet_libraries()
                return function(*args, **kwargs)
            except InvalidExamplesError as e:
                offered = "--skip-invalid" if has_skip and e.skippable else None
                raise S2LError(e.worded(offered)) from None
            except KeyboardInterrupt:
                raise Interrupted(forced=bool(kwargs.get("force"))) from None

        app.command(name)(run)
        return function

    return register


def quiet_libraries() -> None:
    """Hide datasets' and transformers' progress bars and transformers' warnings."""
    # OMP_WAIT_POLICY and TOKENIZERS_PARALLELISM were set by `import smalltolarge`, first.
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _print_version(value: bool) -> None:
    if value:
        from smalltolarge import __version__

        typer.echo(f"s2l (smalltolarge) {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


def report_run(result: Any) -> None:
    """Print a :class:`~smalltolarge.pipeline.RunResult`: the selection, the paths of every
    stage's artifact and each stage's seconds."""
    from smalltolarge.report import print_paths, print_selection_summary
    from smalltolarge.runs import RunDir

    print_selection_summary(result.selection.summary)
    rd = Path(result.run_dir)
    print_paths(
        {
            "pool (normalised)": rd / "pool",
            "tokenised pool": rd / "tokenised",
            "proxy checkpoints": rd / "proxy",
            "trajectories": RunDir(rd).trajectories_losses,
            **selection_paths(result.selection),
        }
    )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    typer.echo(f"time: {stages}; total {sum(result.seconds.values()):.1f}s")


def selection_paths(result: Any) -> dict[str, Path]:
    """The files of a :class:`~smalltolarge.subset.SelectionResult`, by what they hold."""
    return {
        "selected ids": result.directory / "ids.txt",
        "subset": result.subset_path,
        "summary": result.directory / "summary.json",
    }


def report_selection(run_dir: Path, name: str, write: bool) -> None:
    """Write the HTML report of selection ``name`` (``write``), or print the command that
    would."""
    if write:
        from smalltolarge.html_report import write_report

        typer.echo(f"report: {write_report(run_dir, name)}")
    else:
        typer.echo(f"report: `s2l report {run_dir} --selection {name}`")


def is_main_process() -> bool:
    """False on the other processes of an ``accelerate launch``, which print nothing."""
    from smalltolarge.runs import distributed_state

    return distributed_state().is_main_process
