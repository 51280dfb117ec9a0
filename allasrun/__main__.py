"""`python -m allasrun` runs the same entry point as the console script."""

from allasrun.cli import main

main()
