"""`python -m flowctl.cli`."""

from flowctl.cli import main

main()
