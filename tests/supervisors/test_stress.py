"""Stress: 1000 named children under one DynamicSupervisor, random crashes from several
threads while other threads keep calling the children through their names.

Afterwards the tree must be healthy (1000 active, every name answering from the child the
supervisor knows), the restart counts must equal the crashes that actually happened (counted
by the children themselves: a crash message told to an actor that was already dying crashes
nothing), every call must have ended in an answer or a clear error (never a hang), and the
supervisor must stop leaving nothing behind (the autouse leak fixture in tests/conftest.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

import supervisors as sup
from dspy_actors.testing._polling import wait_until

CHILDREN = 1000
CHAOS_SECONDS = 3.0
CRASHERS = 3
CALLERS = 4
# Pause between two crashes from one crasher thread: ~600 crashes/s in all, well within
# what the supervisor restarts on 2 busy cores, so the tree keeps up and the test ends fast.
CRASH_PAUSE = 0.005
CALL_TIMEOUT = 5.0

# Errors a call through a name may end with while its child restarts; anything else fails.
RESTART_ERRORS: tuple[type[Exception], ...] = (
    sup.NotRegistered,
    pykka.ActorDeadError,
    sup.ActorCrashed,
)


class Crash:
    """Told to a child: it counts the crash, then raises (crashing it)."""


CRASH = Crash()


@dataclass
class CrashLedger:
    """Crashes the children actually went through, per child index (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    per_child: Counter[int] = field(default_factory=Counter)

    def record(self, index: int) -> None:
        with self.lock:
            self.per_child[index] += 1

    def get(self, index: int) -> int:
        with self.lock:
            return self.per_child[index]

    def total(self) -> int:
        with self.lock:
            return sum(self.per_child.values())


class StressWorker(sup.SupervisedActor):
    def __init__(self, index: int, ledger: CrashLedger) -> None:
        super().__init__()
        self.index = index
        self.ledger = ledger

    def on_receive(self, message: Any) -> Any:
        if message is CRASH:
            self.ledger.record(self.index)
            raise RuntimeError(f"stress crash of child {self.index}")
        return (self.index, message)


@dataclass
class CallStats:
    sent: int = 0
    answered: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    wrong_answers: list[tuple[int, Any]] = field(default_factory=list)
    # Failures on a name whose child had never crashed: must not happen.
    failed_without_crash: list[tuple[int, str]] = field(default_factory=list)
    hung: int = 0
    unexpected: list[str] = field(default_factory=list)


@dataclass
class CrashStats:
    told: int = 0
    rejected_dead: int = 0  # tell raised ActorDeadError: the actor had already stopped
    not_registered: int = 0  # the name was between two lives: nothing to crash


def _name(index: int) -> str:
    return f"stress-{index}"


def _caller(
    registry: sup.Registry,
    ledger: CrashLedger,
    seed: int,
    stop: threading.Event,
    stats: CallStats,
) -> None:
    rng = random.Random(seed)
    token = 0
    while not stop.is_set():
        index = rng.randrange(CHILDREN)
        token += 1
        stats.sent += 1
        try:
            answer = registry.ask(_name(index), token, timeout=CALL_TIMEOUT)
        except pykka.Timeout:
            stats.hung += 1
            continue
        except RESTART_ERRORS as error:
            stats.failed[type(error).__name__] += 1
            # The name is unregistered / the ref dead only because the child crashed.
            if ledger.get(index) == 0:
                stats.failed_without_crash.append((index, repr(error)))
            continue
        except Exception as error:
            stats.unexpected.append(repr(error))
            stats.failed[type(error).__name__] += 1
            continue
        stats.answered += 1
        if answer != (index, token):
            stats.wrong_answers.append((index, answer))


def _crasher(registry: sup.Registry, seed: int, stop: threading.Event, stats: CrashStats) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        ref = registry.whereis(_name(rng.randrange(CHILDREN)))
        if ref is None:
            stats.not_registered += 1
        else:
            try:
                ref.tell(CRASH)
                stats.told += 1
            except pykka.ActorDeadError:
                stats.rejected_dead += 1
        time.sleep(CRASH_PAUSE)


def _ask_until_answered(registry: sup.Registry, index: int, timeout: float) -> Any:
    """Call a child by name, retrying restart errors: it must answer within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return registry.ask(_name(index), "ping", timeout=CALL_TIMEOUT)
        except RESTART_ERRORS:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_thousand_children_random_crashes_end_healthy() -> None:
    registry = sup.Registry()
    ledger = CrashLedger()
    dyn = sup.DynamicSupervisor.start(
        name="stress", intensity=1_000_000, period=1.0, registry=registry, call_timeout=30.0
    )
    try:
        for i in range(CHILDREN):
            dyn.start_child(
                sup.ChildSpec(f"child-{i}", StressWorker, (i, ledger), name=_name(i), shutdown=5.0)
            )
        assert dyn.count_children().active == CHILDREN

        stop = threading.Event()
        call_stats = [CallStats() for _ in range(CALLERS)]
        crash_stats = [CrashStats() for _ in range(CRASHERS)]
        threads = [
            threading.Thread(
                target=_caller,
                args=(registry, ledger, 1000 + n, stop, call_stats[n]),
                name=f"stress-caller-{n}",
            )
            for n in range(CALLERS)
        ] + [
            threading.Thread(
                target=_crasher,
                args=(registry, 2000 + n, stop, crash_stats[n]),
                name=f"stress-crasher-{n}",
            )
            for n in range(CRASHERS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(CHAOS_SECONDS)
        stop.set()
        for thread in threads:
            # A caller is at most one call (CALL_TIMEOUT) away from noticing `stop`.
            thread.join(timeout=CALL_TIMEOUT + 10.0)
        assert not [t.name for t in threads if t.is_alive()], "a caller or crasher hung"

        # Quiesce: every child running again, nothing waiting for a restart.
        wait_until(
            lambda: (c := dyn.count_children()).active == CHILDREN and c.restarting == 0,
            20.0,
            "all children to be running again",
        )
        # Every name resolves to a live actor that answers. A successful call on a ref also
        # proves no crash told to that ref is still queued (the inbox is FIFO), so after this
        # loop every crash counted in the ledger has been seen by the supervisor.
        for i in range(CHILDREN):
            assert _ask_until_answered(registry, i, 10.0) == (i, "ping")

        infos = {info.id: info for info in dyn.which_children()}
        counts = dyn.count_children()
        assert counts.active == CHILDREN
        assert counts.specs == CHILDREN
        assert counts.restarting == 0
        assert counts.abandoned == 0
        for i in range(CHILDREN):
            info = infos[f"child-{i}"]
            assert info.state == "running"
            assert info.ref is not None
            assert info.ref.is_alive()
            assert registry.whereis(_name(i)) is info.ref, f"name of child {i} is stale"

        # Restarts add up, child by child: one restart per crash the child went through.
        crashes = ledger.total()
        told = sum(s.told for s in crash_stats)
        restarts = {i: infos[f"child-{i}"].restart_count for i in range(CHILDREN)}
        assert crashes > 0, "the chaos phase crashed nothing"
        assert crashes <= told, (crashes, told)
        assert sum(restarts.values()) == crashes
        mismatched = {
            i: (restarts[i], ledger.get(i)) for i in range(CHILDREN) if restarts[i] != ledger.get(i)
        }
        assert not mismatched, f"restart_count != crashes for children {mismatched}"

        # Every call ended: answered correctly or failed with a restart error, never hung.
        sent = sum(s.sent for s in call_stats)
        answered = sum(s.answered for s in call_stats)
        failed: Counter[str] = Counter()
        for s in call_stats:
            failed.update(s.failed)
        assert sent == answered + sum(failed.values())
        assert answered > 0
        assert sum(s.hung for s in call_stats) == 0
        assert not [u for s in call_stats for u in s.unexpected]
        assert not [w for s in call_stats for w in s.wrong_answers]
        assert not [f for s in call_stats for f in s.failed_without_crash]
        print(
            f"\nstress: {crashes} crashes delivered of {told} told "
            f"({sum(s.rejected_dead for s in crash_stats)} tells rejected: already dead), "
            f"{sent} calls: {answered} answered, failed {dict(failed)}"
        )
    finally:
        reason = dyn.stop(timeout=60.0)
    assert reason == sup.SHUTDOWN
    assert not dyn.is_alive
