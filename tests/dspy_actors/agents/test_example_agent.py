"""examples/agent.py runs as a user would run it, and reports every question answered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_agent_example_answers_every_question_despite_the_hung_tool() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["answered"] == lines["questions"] == "24"
    timeouts = int(lines["traffic_timeouts"])
    busy = int(lines["traffic_busy"])
    assert timeouts >= 1
    assert timeouts + busy == 24  # every traffic call was abandoned or refused, none hung
    assert "did not answer within 0.2s" in lines["sample_observation"]
