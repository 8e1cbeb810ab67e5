"""``python -m dspy_actors.lm._worker_main``: an LM worker process (see ``_worker_process``).

A module of its own because the package imports ``_worker_process`` (for its framing), and
running an already-imported module as ``__main__`` would load it twice.
"""

from dspy_actors.lm._worker_process import main

if __name__ == "__main__":
    main()
