"""A chaos monkey for a running app: kill actors by name pattern at a rate, crash a given
module actor on its k-th call, or SIGKILL an LM worker process (``lm_processes``).

It works only through the runtime's public surface: the app's registry (names such as
``app1/qa@v1/answer``), its supervision tree (``which_children``), its event bus
(``module.start`` events) and ``supervisors.kill``. It never reaches into an actor.

    monkey = ChaosMonkey(app, seed=7)
    run = monkey.kill_every("*/qa@v*/*", every_s=0.05, duration_s=10)
    ...                          # drive calls; the supervisors restart what is killed
    monkey.stop()
    print(run.kills, monkey.kills)

Reproducible for a seed: given the same live actors at each tick, the same seed picks the
same victims in the same order.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pykka

import supervisors

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App

__all__ = ["ChaosMonkey", "ChaosRun", "CrashRule", "Kill"]

_NAME = re.compile(r"^(?P<app>[^/]+)/(?P<program>[^/@]+)@v(?P<version>\d+)/(?P<path>.*)$")
_STOP_JOIN_SECONDS = 5.0
# How long a supervisor (or process owner) may take to answer a tree walk: generous, as a
# busy machine can delay any actor by seconds; one that is restarting answers at once
# (dead), so this only bounds the slow case.
_TREE_ASK_SECONDS = 10.0

_run_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Kill:
    """One kill: which actor (registry name or tree path), when (monotonic), and by what."""

    target: str
    at: float
    by: str


@dataclass(eq=False)
class ChaosRun:
    """A background killer started by :meth:`ChaosMonkey.kill_every`."""

    pattern: str
    every_s: float
    duration_s: float | None
    max_kills: int | None
    kills: int = 0
    idle_ticks: int = 0  # ticks where no live actor matched the pattern
    thread: threading.Thread | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float = _STOP_JOIN_SECONDS) -> None:
        """Stop killing and join the thread (at most ``timeout`` seconds)."""
        self.stopped.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)


@dataclass(eq=False)
class CrashRule:
    """Set up by :meth:`ChaosMonkey.crash_on_message`: kill a module's actor on its k-th call."""

    pattern: str
    k: int
    times: int | None
    crashes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    fired: threading.Event = field(default_factory=threading.Event)
    subscription: Any = None

    @property
    def done(self) -> bool:
        return self.times is not None and self.crashes >= self.times


class ChaosMonkey:
    """Breaks a running :class:`~dspy_actors.App` on purpose, reproducibly for a ``seed``.

    - :meth:`kill_every` kills a random live actor whose name matches a glob, every
      ``every_s`` seconds, in a background thread (``chaos-<n>``), until ``duration_s``,
      ``max_kills`` or :meth:`stop`.
    - :meth:`crash_on_message` kills a module's actor right after it accepts its k-th call.
    - :meth:`kill` kills every live actor matching a glob once, now.

    Patterns are ``fnmatch`` globs (``*`` also matches ``/``). With ``by="name"`` they match
    registry names (``app1/qa@v1/answer``; ``app1/qa@v1/`` is an ``app.serve``d module's own actor);
    with ``by="tree"`` they match tree paths from the root (``app1/lm/workers/loop-0``,
    ``app1/modules/qa@v1/answer``), which reaches unnamed actors and supervisors too.

    Kills are ``supervisors.kill`` (exit reason ``killed``): the actor finishes the message
    it is handling, answers its calls in flight with ``ModuleCrashed`` and exits; its
    supervisor restarts it. :meth:`stop` (or leaving the ``with`` block) stops everything.
    """

    def __init__(self, app: App, *, seed: int = 0) -> None:
        self.app = app
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._runs: list[ChaosRun] = []
        self._rules: list[CrashRule] = []
        self.log: list[Kill] = []
        # Actors (urns) and processes ("pid N") this monkey killed: one still exiting is not
        # live, and is never a victim twice (on a busy machine a later tick could find it
        # still registered, and two kills would make one restart).
        self._killed: set[str] = set()

    # Counters. ---------------------------------------------------------------------------

    @property
    def kills(self) -> int:
        """Every kill this monkey made (all runs, rules and one-off kills)."""
        with self._lock:
            return len(self.log)

    @property
    def runs(self) -> list[ChaosRun]:
        with self._lock:
            return list(self._runs)

    # Finding victims. --------------------------------------------------------------------

    def targets(
        self, pattern: str, *, by: Literal["name", "tree"] = "name"
    ) -> dict[str, pykka.ActorRef[Any]]:
        """The live actors matching ``pattern`` now, by registry name or tree path (not
        one this monkey already killed that is still exiting)."""
        found = self._by_name() if by == "name" else self._by_tree()
        with self._lock:
            killed = set(self._killed)
        return {
            target: ref
            for target, ref in found.items()
            if fnmatch.fnmatchcase(target, pattern)
            and not ref.actor_stopped.is_set()
            and ref.actor_urn not in killed
        }

    def _by_name(self) -> dict[str, pykka.ActorRef[Any]]:
        registry = self.app.registry
        found: dict[str, pykka.ActorRef[Any]] = {}
        for name in registry.names():
            ref = registry.whereis(name)
            if ref is not None:
                found[name] = ref
        return found

    def _by_tree(self) -> dict[str, pykka.ActorRef[Any]]:
        found: dict[str, pykka.ActorRef[Any]] = {}

        def walk(ref: pykka.ActorRef[Any], prefix: str) -> None:
            # Wrapping the ref asks the supervisor its name: that ask, too, can time out
            # on a busy machine, or find it dead.
            try:
                handle = supervisors.Supervisor(ref, call_timeout=_TREE_ASK_SECONDS)
                infos = handle.which_children()
            except (supervisors.SupervisorExited, pykka.Timeout, pykka.ActorDeadError):
                return  # it is restarting or gone: nothing to pick from it on this tick
            for info in infos:
                if info.ref is None:
                    continue
                path = f"{prefix}/{info.id}"
                found[path] = info.ref
                if info.type == "supervisor":
                    walk(info.ref, path)

        walk(self.app.root.ref, self.app.name)
        return found

    def _kill(self, target: str, ref: pykka.ActorRef[Any], by: str) -> bool:
        try:
            supervisors.kill(ref)
        except (TypeError, pykka.ActorDeadError):
            return False  # not a supervised actor, or already gone
        with self._lock:
            self._killed.add(ref.actor_urn)
            self.log.append(Kill(target, time.monotonic(), by))
        return True

    # One-off. ----------------------------------------------------------------------------

    def kill(self, pattern: str, *, by: Literal["name", "tree"] = "name") -> list[str]:
        """Kill every live actor matching ``pattern`` now; returns what was killed."""
        killed = []
        for target, ref in sorted(self.targets(pattern, by=by).items()):
            if self._kill(target, ref, "kill"):
                killed.append(target)
        return killed

    def lm_process_pids(self) -> dict[str, int]:
        """The pid of each live LM worker process of the app, by its owner's tree path
        (one that is restarting, or too slow to answer now, is left out)."""
        owners = self.targets("*/lm/workers/process-*", by="tree")
        pids: dict[str, int] = {}
        for target, ref in sorted(owners.items()):
            try:
                described = ref.proxy().describe().get(timeout=_TREE_ASK_SECONDS)
            except (pykka.ActorDeadError, pykka.Timeout, AttributeError):
                continue  # restarting: not a victim on this call
            pid = described.get("pid") if isinstance(described, dict) else None
            if isinstance(pid, int):
                pids[target] = pid
        with self._lock:  # a process already sent a signal, its owner not yet told
            return {target: pid for target, pid in pids.items() if f"pid {pid}" not in self._killed}

    def kill_lm_process(self, *, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` (SIGKILL: what the OOM killer sends) to one live LM worker process
        of an app started with ``lm_processes``, picked with the monkey's seed; its pid, or
        None if there is none. The process's owner actor crashes and is restarted with a
        new process; the requests it held are retried once on another worker.

        Unlike :meth:`kill`, this kills an OS process, not an actor: it tests what happens
        when the process dies under the runtime, not when the runtime stops it."""
        pids = self.lm_process_pids()
        if not pids:
            return None
        target = self._rng.choice(sorted(pids))
        try:
            os.kill(pids[target], sig)
        except ProcessLookupError:
            return None  # it died meanwhile
        with self._lock:
            self._killed.add(f"pid {pids[target]}")
            self.log.append(
                Kill(f"{target} (pid {pids[target]})", time.monotonic(), "kill_lm_process")
            )
        return pids[target]

    # At a rate. --------------------------------------------------------------------------

    def kill_every(
        self,
        pattern: str,
        every_s: float,
        *,
        duration_s: float | None = 60.0,
        max_kills: int | None = None,
        by: Literal["name", "tree"] = "name",
    ) -> ChaosRun:
        """Every ``every_s`` seconds, kill one random live actor matching ``pattern``.

        Runs in a background thread until ``duration_s`` seconds have passed (None: until
        :meth:`stop`), ``max_kills`` kills were made, or :meth:`stop`. Returns the run,
        whose ``kills`` counts its kills.
        """
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s!r}")
        run = ChaosRun(pattern, every_s, duration_s, max_kills)
        # Each run draws from its own stream, derived from the monkey's seed in start order.
        rng = random.Random(self._rng.random())
        run.thread = threading.Thread(
            target=self._kill_loop,
            args=(run, rng, by),
            name=f"chaos-{next(_run_ids)}",
            daemon=True,
        )
        with self._lock:
            self._runs.append(run)
        run.thread.start()
        return run

    def _kill_loop(self, run: ChaosRun, rng: random.Random, by: Literal["name", "tree"]) -> None:
        end = None if run.duration_s is None else time.monotonic() + run.duration_s
        try:
            while not run.stopped.wait(run.every_s):
                if end is not None and time.monotonic() >= end:
                    break
                victims = self.targets(run.pattern, by=by)
                if not victims:
                    run.idle_ticks += 1
                    continue
                target = rng.choice(sorted(victims))
                if self._kill(target, victims[target], f"kill_every({run.pattern!r})"):
                    run.kills += 1
                if run.max_kills is not None and run.kills >= run.max_kills:
                    break
        except BaseException as error:  # reported on the run; a chaos thread never raises
            run.error = error
        finally:
            run.stopped.set()

    # On the k-th call. ---------------------------------------------------------------------

    def crash_on_message(self, name_pattern: str, k: int, *, times: int | None = 1) -> CrashRule:
        """Kill the actor of every module matching ``name_pattern`` right after it accepts
        its ``k``-th call (counted per module since the rule was set, and again from zero
        after each crash), ``times`` times in all (None: every k-th call, for ever).

        ``name_pattern`` matches a module's path as events name it (``qa.answer``) or its
        registry name (``app1/qa@v1/answer``). The count comes from the app's
        ``module.start`` events, delivered by the event bus a moment after the actor
        accepted the call, so the kill lands within that delivery delay: the k-th call,
        and maybe a few after it, are in flight when the actor dies.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        rule = CrashRule(name_pattern, k, times)
        rule.subscription = self.app.subscribe("module.start", self._on_start(rule))
        with self._lock:
            self._rules.append(rule)
        return rule

    def _on_start(self, rule: CrashRule) -> Callable[[Any], None]:
        def on_start(event: Any) -> None:
            path = str(getattr(event, "module_path", ""))
            if rule.done:
                return
            name = self._registry_name(path)
            if not fnmatch.fnmatchcase(path, rule.pattern) and not (
                name is not None and fnmatch.fnmatchcase(name, rule.pattern)
            ):
                return
            count = rule.counts.get(path, 0) + 1
            rule.counts[path] = count
            if count < rule.k or name is None:
                return
            ref = self.app.registry.whereis(name)
            if ref is not None and self._kill(name, ref, f"crash_on_message({rule.pattern!r})"):
                rule.counts[path] = 0
                rule.crashes += 1
                rule.fired.set()

        return on_start

    def _registry_name(self, module_path: str) -> str | None:
        """The registry name serving a module path (``qa.answer``), newest version first."""
        best: tuple[int, str] | None = None
        for name in self.app.registry.names():
            parsed = _NAME.match(name)
            if parsed is None or parsed["app"] != self.app.name:
                continue
            path = parsed["path"]
            label = parsed["program"] + ("." + path if path else "")
            if label == module_path:
                version = int(parsed["version"])
                if best is None or version > best[0]:
                    best = (version, name)
        return None if best is None else best[1]

    # Lifecycle. ----------------------------------------------------------------------------

    def stop(self, timeout: float = _STOP_JOIN_SECONDS) -> None:
        """Stop every run and rule; join the runs' threads (``timeout`` seconds in all)."""
        with self._lock:
            runs, rules = list(self._runs), list(self._rules)
        for rule in rules:
            if rule.subscription is not None:
                self.app.events.unsubscribe(rule.subscription)
                rule.subscription = None
        for run in runs:
            run.stopped.set()
        deadline = time.monotonic() + timeout
        for run in runs:
            run.stop(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ChaosMonkey:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
