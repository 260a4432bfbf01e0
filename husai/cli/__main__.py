"""`python -m husai.cli` is the `husai` command."""

from husai.cli import main

main()
