"""User-facing errors.

Everything a user can get wrong (a malformed file, a missing column, a budget larger than the
pool, trajectories computed on another pool) raises :class:`S2LError`. The CLI prints its
message on one line and exits with status 2, without a traceback; the Python API lets it
propagate like any other exception.
"""

from __future__ import annotations


class S2LError(ValueError):
    """An input problem the user can fix; the message says what and where."""


class InvalidExamplesError(S2LError):
    """Invalid examples in an input read with ``on_invalid="error"``.

    ``detail`` names the first one and counts them all; the message ends with how to go on:
    fix them, or drop them with ``on_invalid='skip'`` (:func:`~smalltolarge.data.load_pool`'s
    own option). The CLI words that as the command's ``--skip-invalid`` only where the command
    has that option and it applies to this input (``skippable``: the caller chose
    ``on_invalid``), and as "fix them" alone elsewhere, so that no command offers an option it
    does not have.
    """

    def __init__(self, detail: str, *, skippable: bool = True):
        self.detail, self.skippable = detail, skippable
        super().__init__(self.worded("on_invalid='skip'"))

    def worded(self, skip: str | None) -> str:
        """The message, offering ``skip`` (an option's name) to drop them, or not (None)."""
        return f"{self.detail}; fix them" + (f", or pass {skip} to drop them)" if skip else ")")
