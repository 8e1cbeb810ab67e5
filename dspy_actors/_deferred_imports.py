"""Third-party modules imported when first used, not with the package.

``import dspy_actors`` is paid by every process that uses it: each CLI start, each LM
worker process, each subprocess a test starts. Two things made it heavy for work most
processes never do (measured in docs/benchmarks.md, "Session 9: start-up and shutdown"):

- httpx's ``__init__`` imports its command-line client (``httpx._main``: click, and rich's
  and pygments' consoles, syntax highlighting and progress bars) whenever those are
  installed, as they are next to this package (rich for the demo's display, click through
  uvicorn or ray). :func:`import_httpx_without_cli` imports
  httpx with a stand-in for that module, whose ``main`` loads the real client when called:
  ``httpx.main`` (the ``httpx`` command) works as before, and ``import httpx._main`` by
  name loads the real module as usual. Importing this module does it, so it is the first
  import of the package's ``__init__`` and of an LM worker process's bootstrap (nothing
  in them may import httpx before it; ``tests/dspy_actors/test_import_cost.py`` checks).
- aiohttp (with yarl, multidict, attrs...) is needed once an LM sends on an event loop:
  modules that use it hold a :func:`lazy_module` in its place until then.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["import_httpx_without_cli", "lazy_module"]


def import_httpx_without_cli() -> None:
    """Import httpx, if it is not imported yet, without importing its command-line client.

    Call it before anything imports httpx (the package's ``__init__`` does; so does an LM
    worker process, which skips that ``__init__``)."""
    if "httpx" in sys.modules:
        return  # imported already (by the program using this package): nothing to save
    stand_in = types.ModuleType("httpx._main", "httpx's command-line client, loaded on use")

    def main(*args: Any, **kwargs: Any) -> Any:
        """httpx's command-line client (the real one, imported now)."""
        return importlib.import_module("httpx._main").main(*args, **kwargs)

    setattr(stand_in, "main", main)  # noqa: B010 (a module object built here)
    sys.modules["httpx._main"] = stand_in
    try:
        importlib.import_module("httpx")
    finally:
        # httpx keeps the stand-in's main; the name is free again for the real module.
        if sys.modules.get("httpx._main") is stand_in:
            del sys.modules["httpx._main"]


class _LazyModule:
    """Stands for module ``name`` in a module's globals until an attribute of it is first
    read: then imports it and puts the real module in its own place, so later reads cost
    what a plain module global does."""

    def __init__(self, name: str, owner: dict[str, Any], as_name: str) -> None:
        self._name = name
        self._owner = owner
        self._as_name = as_name

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._name)  # (thread-safe: the import lock)
        self._owner[self._as_name] = module
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


def lazy_module(name: str, owner: dict[str, Any], as_name: str | None = None) -> Any:
    """A stand-in for module ``name`` to bind as ``as_name`` (default: ``name``) in the
    globals ``owner``, imported on first use. Bind it under ``if not TYPE_CHECKING``, with
    the real import under ``if TYPE_CHECKING``, so type checkers see the module::

        if TYPE_CHECKING:
            import aiohttp
        else:
            aiohttp = lazy_module("aiohttp", globals())
    """
    return _LazyModule(name, owner, as_name or name)


import_httpx_without_cli()
