"""`python -m promptclimb ...`: the `promptclimb` command."""

from promptclimb.agent.cli import main

main()
