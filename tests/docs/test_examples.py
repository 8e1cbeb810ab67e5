"""Every ```python block in the README and docs runs, as a newcomer would paste it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for index, code in enumerate(BLOCK.findall(doc.read_text(encoding="utf-8"))):
            found.append((f"{doc.name}#{index}", code))
    return found


def _cases() -> list[Any]:
    """Each block as a test case; one that starts Ray runs on the worker that runs the Ray
    tests (pytest-xdist group "ray-cluster"), so two Ray instances never start at once."""
    return [
        pytest.param(
            where,
            code,
            id=where,
            marks=[pytest.mark.xdist_group("ray-cluster")] if "import ray" in code else [],
        )
        for where, code in _blocks()
    ]


@pytest.mark.parametrize(("where", "code"), _cases())
def test_documented_example_runs(where: str, code: str, tmp_path: Path) -> None:
    # A block that starts Ray (docs/deploying.md) keeps its session files under a private
    # directory removed here, not in /tmp/ray where every run would leave one behind (a
    # short path: Ray's Unix socket paths are limited to 108 bytes).
    ray_tmp = tempfile.mkdtemp(prefix="dsaray-", dir="/tmp")
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={**os.environ, "RAY_TMPDIR": ray_tmp},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"


def test_readme_opens_with_the_two_newcomer_commands() -> None:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    commands = [line for line in lines[:8] if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2
    assert commands[1].endswith(".venv/bin/pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must run exactly the README's test command"
