"""Every program in examples/ runs as a newcomer would run it, against SimLM, in CI.

Scripts (``examples/*.py``) run as subprocesses with ``python examples/<name>.py``; the
user-style pytest files (``examples/test_*.py``) run with pytest. Each must exit 0 within
its time bound and print what its docstring says it shows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_"))
PYTEST_FILES = sorted(EXAMPLES.glob("test_*.py"))
# Well above what each takes on an idle machine (a few seconds), for a busy CI runner.
BOUND_S = 240

# What a script must print: the lines that show it did what its docstring promises. A
# script not listed (a new example) must still run cleanly.
EXPECTED = {
    "quickstart.py": ["Predict:           4", "ChainOfThought:    42", "Demos after load:  1"],
    "rag_service.py": [
        "Honey bees communicate the direction of flowers",
        "After the answer actor was killed and restarted:",
        "answer (worker) running restarts=1 last_exit=killed",
    ],
    "program_tree.py": [
        "reply (worker) running restarts=1",
        " 0 failed",
        "v2's prompts carry the new instructions: True",
        "summarize@v1",
    ],
    "optimize_resume.py": [
        "Before optimizing: 0/3 right",
        "After optimizing:  3/3 right",
        "Same program as an uninterrupted run: True",
    ],
    "supervision_tree.py": ["hung: 0", "healthy: True"],
    "streaming_service.py": [
        "Streams answered in full: 80 (each text whole: True)",
        "Clients that hung up mid-stream: 20",
    ],
}


def test_the_expected_examples_exist() -> None:
    missing = sorted(set(EXPECTED) - {p.name for p in SCRIPTS})
    assert not missing, f"examples/ lost {missing} (or rename them in EXPECTED)"
    assert PYTEST_FILES, "examples/ holds no user-style pytest file"


@pytest.mark.timeout(BOUND_S + 30)
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_script_runs(script: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # as a newcomer might: not from the repository root
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        check=False,
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stderr[-4000:]}"
    for line in EXPECTED.get(script.name, []):
        assert line in result.stdout, f"{script.name} did not print {line!r}:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


@pytest.mark.timeout(BOUND_S + 30)
@pytest.mark.parametrize("test_file", PYTEST_FILES, ids=[p.name for p in PYTEST_FILES])
def test_example_pytest_file_passes(test_file: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", "--timeout", "120"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{test_file.name} failed:\n{out[-4000:]}"
    assert " passed" in out, out[-4000:]
    assert "failed" not in out, out[-4000:]
