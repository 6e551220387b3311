"""``python -m smalltolarge.cli`` (what ``accelerate launch -m smalltolarge.cli`` runs)."""

from smalltolarge.cli import main

main()
