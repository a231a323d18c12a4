"""Run the CLI with ``python -m mockerops``."""

from mockerops.cli import main

main()
