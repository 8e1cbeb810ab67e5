"""``python -m dspy_actors.testing``: run the simulated LM server in the foreground."""

from dspy_actors.testing.sim_lm import main

main()
