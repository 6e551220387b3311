"""Progress: one switch (``progress``) shows or hides every bar, ours and the libraries', and
every stage's one-line messages (:func:`messages`).

Bars are drawn only on a terminal. In a log file (stderr not a TTY) a bar is a stream of
carriage-return updates that interleave with other output, so there they are off and each
stage's one-line messages are what the log holds.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def messages(progress: bool) -> Callable[..., None]:
    """How a stage says what it is doing: ``print`` when ``progress`` is on, else a function
    that says nothing. Every stage's one-line messages go through this one switch (bars
    through :func:`bar`, summary tables through :mod:`smalltolarge.report`)."""
    return print if progress else _say_nothing


def _say_nothing(*args: Any, **kwargs: Any) -> None:
    pass


def bars_shown(progress: bool) -> bool:
    """Whether a progress bar is drawn: ``progress`` is on and stderr is a terminal."""
    return bool(progress) and sys.stderr.isatty()


def bar(*, progress: bool, **kwargs: Any):
    """A ``tqdm`` bar (``kwargs`` as tqdm's), drawn only when :func:`bars_shown`."""
    from tqdm.auto import tqdm

    return tqdm(disable=not bars_shown(progress), **kwargs)


@contextlib.contextmanager
def library_bars(progress: bool) -> Iterator[None]:
    """Hide the bars of datasets ("Saving the dataset"), transformers ("Writing model
    shards") and huggingface_hub in the block unless :func:`bars_shown`; the previous state
    is restored after. Bars already hidden (the ``s2l`` command hides them) stay hidden."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    if bars_shown(progress):
        yield
        return
    was = (
        datasets.is_progress_bar_enabled(),
        hf_logging.is_progress_bar_enabled(),
        not hub.are_progress_bars_disabled(),
    )
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()  # hub bars too
    try:
        yield
    finally:
        if was[0]:
            datasets.enable_progress_bars()
        if was[1]:
            hf_logging.enable_progress_bar()
        elif was[2]:
            hub.enable_progress_bars()
        if not was[2]:
            hub.disable_progress_bars()


def quiet_libraries_unless_progress(stage: Callable[P, R]) -> Callable[P, R]:
    """Run a stage function under :func:`library_bars` of its own ``progress`` keyword."""

    @functools.wraps(stage)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with library_bars(bool(kwargs.get("progress", True))):
            return stage(*args, **kwargs)

    return wrapper
