"""``python -m mailmerge`` runs the CLI."""

from mailmerge.cli import main

main()
