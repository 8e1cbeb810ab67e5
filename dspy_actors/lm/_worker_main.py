"""How an LM worker process is started (see ``_worker_process`` for what it does).

The worker needs only the LM layer, but importing any ``dspy_actors.*`` module first runs
the package's ``__init__``, which imports everything (runtime, optimizers, signatures): more
than half of a worker's start-up time, paid again at every restart after a crash. So the
worker is started with :data:`BOOTSTRAP`, which registers a bare ``dspy_actors`` package
(its ``__path__`` only) before importing ``dspy_actors.lm._worker_process``: the
submodules load as usual, the package's ``__init__`` never runs. Code in the worker must
therefore import submodules (``from dspy_actors.lm._lm import LM``), never names that only
the package's ``__init__`` defines (``dspy_actors.LM``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The package's directory, wherever it is installed (or checked out): the bare package's
# ``__path__`` in the worker.
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])

# Registers the bare package whose directory is the first argument.
BARE_PACKAGE = (
    "import sys, types\n"
    "package = types.ModuleType('dspy_actors')\n"
    "package.__path__ = [sys.argv[1]]\n"
    "sys.modules['dspy_actors'] = package\n"
)
# _deferred_imports first: httpx without its command-line client (as the package does).
BOOTSTRAP = (
    BARE_PACKAGE
    + "import dspy_actors._deferred_imports\n"
    + "from dspy_actors.lm._worker_process import main\nmain()\n"
)


def worker_command() -> list[str]:
    """The command line of a worker process: this interpreter, with ``-P`` so that the
    current directory cannot shadow a module the worker imports."""
    return [sys.executable, "-P", "-c", BOOTSTRAP, PACKAGE_DIR]
