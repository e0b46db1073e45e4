"""`python -m promptclimb.agent.cli ...`: the `promptclimb` command (tests run it so)."""

from promptclimb.agent.cli import main

main()
