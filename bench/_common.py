"""Shared helpers for the benchmarks in bench/: statistics, machine info, result files,
memory readings and logging switches. Generic: nothing here knows what is benchmarked.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timed_threads(
    target: Callable[[int], object], count: int, timeout: float = 600.0
) -> tuple[float, float]:
    """Run ``target(i)`` in ``count`` threads started together; (wall seconds, this
    process's CPU seconds) from the first start to the last join. Each join waits at most
    ``timeout`` seconds."""
    threads = [threading.Thread(target=target, args=(i,), name=f"bench-{i}") for i in range(count)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return time.perf_counter() - t0, time.process_time() - cpu0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest-rank method (no interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else math.nan


def summarize_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max/mean of durations given in seconds, reported in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p90_ms": percentile(seconds, 90) * 1e3,
        "p99_ms": percentile(seconds, 99) * 1e3,
        "max_ms": max(seconds) * 1e3 if seconds else math.nan,
        "mean_ms": statistics.fmean(seconds) * 1e3 if seconds else math.nan,
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ("pykka", "structlog")) -> dict[str, Any]:
    """What the numbers depend on: cores, CPU, Python, package versions, load, date (UTC)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "switch_interval_s": sys.getswitchinterval(),
        "loadavg_at_start": load,
        "packages": {name: _version(name) for name in packages},
    }


def machine_load() -> dict[str, Any]:
    """How busy the machine is now: load averages and CPU pressure (PSI ``some avg10``, % of
    the last 10 s in which some runnable task waited for a CPU). None where unavailable."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    pressure: float | None = None
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            for line in f:
                if line.startswith("some"):
                    pressure = float(line.split()[1].split("=")[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"loadavg": load, "cpu_pressure_some_avg10": pressure}


def rss_kib() -> int:
    """Resident set size of this process in KiB (VmRSS from /proc/self/status; Linux only)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` as bench/results/<name>.json (pretty, stable key order); return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


_devnull: Any = None


def configure_logging(enabled: bool, stdlib_loggers: Sequence[str] = ()) -> None:
    """Switch structlog and the given stdlib loggers off, or on but writing to /dev/null.

    ``enabled=False``: structlog drops every event below CRITICAL before rendering (a
    filtering bound logger; anything CRITICAL still goes to /dev/null) and the stdlib loggers
    are disabled. ``enabled=True``: structlog's default processors and console renderer run,
    and stdlib records are formatted (with tracebacks), all written to /dev/null: the full
    cost of logging without the terminal's.
    """
    global _devnull
    if _devnull is None:
        _devnull = open(os.devnull, "w")  # noqa: SIM115 - kept open for the process lifetime
    structlog.reset_defaults()
    if enabled:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=_devnull))
    else:
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
            logger_factory=structlog.PrintLoggerFactory(file=_devnull),
        )
    for name in stdlib_loggers:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, "_bench_handler", False):
                logger.removeHandler(handler)
        if enabled:
            handler = logging.StreamHandler(_devnull)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            handler._bench_handler = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.disabled = False
        else:
            logger.setLevel(logging.CRITICAL + 10)
            logger.propagate = False
            logger.disabled = True
