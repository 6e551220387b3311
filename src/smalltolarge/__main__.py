"""``python -m smalltolarge``: the ``smalltolarge`` (``s2l``) command."""

from smalltolarge.cli import main

main()
