"""User-facing errors.

Everything a user can get wrong (a malformed file, a missing column, a budget larger than the
pool, trajectories computed on another pool) raises :class:`S2LError`. The CLI prints its
message on one line and exits with status 2, without a traceback; the Python API lets it
propagate like any other exception.
"""

from __future__ import annotations


class S2LError(ValueError):
    """An input problem the user can fix; the message says what and where."""
