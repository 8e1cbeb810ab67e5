"""``import dspy_actors`` leaves out what most processes never use (``_deferred_imports``):
httpx's command-line client (with click), aiohttp until an LM sends on an event loop,
urllib3 until an LM sends from a thread. Each check runs in a fresh interpreter. (rich is
still imported: structlog imports it for its console renderer when it is installed.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from typing import Any

from dspy_actors._deferred_imports import lazy_module
from dspy_actors.lm import _worker_main

DEFERRED = ("httpx._main", "click", "aiohttp", "urllib3")

_LOADED = f"print(sorted(m for m in {DEFERRED!r} if m in sys.modules))\n"


def _run(code: str, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-P", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


def test_importing_the_package_loads_none_of_them() -> None:
    assert _run("import sys\nimport dspy_actors\n" + _LOADED) == []


def test_an_lm_worker_process_loads_none_of_them_but_urllib3() -> None:
    # The worker's own bootstrap, up to serving (it sends from threads: urllib3 is its job).
    code = _worker_main.BOOTSTRAP.replace("\nmain()\n", "\nfrom dspy_actors.lm._lm import LM\n")
    assert code != _worker_main.BOOTSTRAP
    assert _run(code + _LOADED, _worker_main.PACKAGE_DIR) == []


def test_each_loads_when_it_is_needed(sim_lm: Any) -> None:
    code = (
        "import asyncio, sys\n"
        "import dspy_actors as dsa\n"
        "lm = dsa.LM('openai/sim-model', api_base=sys.argv[1], api_key='k', cache=False)\n"
        "lm.complete([{'role': 'user', 'content': 'from a thread: urllib3'}])\n"
        "asyncio.run(lm.acomplete([{'role': 'user', 'content': 'on a loop: neither'}]))\n"
        "lm.close()\n" + _LOADED
    )
    # A whole answer on a loop goes over the LM's own connections (lm/_aio_posts.py), so
    # aiohttp (streams, proxies, a server's cookies) is still not needed.
    assert _run(code, sim_lm.openai_base) == ["urllib3"]


def test_httpx_command_line_client_is_the_real_one_when_asked_for() -> None:
    code = (
        "import sys\n"
        "import dspy_actors\n"
        "import httpx\n"
        "assert 'import_httpx_without_cli' in httpx.main.__qualname__, 'the stand-in'\n"
        "try:\n"
        "    import httpx._main\n"
        "except ImportError:\n"  # (click, rich or pygments not installed: httpx's own case)
        "    print([True])\n"
        "else:\n"
        "    print([hasattr(httpx._main, 'print_help')])\n"
    )
    assert _run(code) == [True]


def test_a_lazy_module_puts_the_real_module_in_its_place_on_first_use() -> None:
    owner: dict[str, Any] = {}
    owner["json"] = lazy_module("json", owner)
    assert "imported on first use" in repr(owner["json"])
    assert owner["json"].dumps([1]) == "[1]"
    import json

    assert owner["json"] is json
