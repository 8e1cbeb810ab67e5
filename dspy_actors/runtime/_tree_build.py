"""Turning a program into a supervision subtree: one actor per module, mirroring composition.

- ``app.serve(name, module)``: a predictor is one actor; a composite module becomes a
  supervisor whose children are its sub-modules (recursively), plus an actor for the
  composite itself, which runs the user's ``forward`` with each sub-module replaced by a
  :class:`ModuleProxy` that calls the sub-module's actor. ``forward`` works unchanged; it
  runs on a greenlet in the composite's actor, parked while a sub-module call is in flight
  (see runtime/_module_actor.py and dspy_actors/waiting.py), unless the module sets
  ``blocking_forward = True``.
- ``app.program(name, steps)``: one actor (or subtree) per step, side by side under the
  program's supervisor, and nothing else: no actor sits between the steps. The caller's
  thread drives a call through them (see :mod:`dspy_actors.runtime._pipeline`). Here:
  :func:`instantiate_step` makes each step's module, :func:`accepted_inputs` says which of
  the values so far each step takes.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import supervisors
from dspy_actors.primitives.module import Module
from dspy_actors.runtime._calls import call_resending, never_stopped
from dspy_actors.runtime._context import capture
from dspy_actors.runtime._module_actor import (
    ForwardActor,
    ModuleActor,
    ModuleServices,
    is_predictor,
)

ENTRY = "entry"  # the child id of a program's entry actor


# A served program's default restart intensity: more than this many restarts within
# PROGRAM_PERIOD seconds and its subtree gives up (``modules`` restarts it whole). Sized to
# ride out a crash somewhere in the program every 100 ms without restarting all of it (a
# composite's own actor would lose its calls in flight), while a crash loop, whose restarts
# come milliseconds apart, still gives up within a fraction of a second.
PROGRAM_INTENSITY = 50
PROGRAM_PERIOD = 5.0


@dataclass(frozen=True, slots=True)
class TreeOptions:
    """How a served program's subtree behaves."""

    strategy: supervisors.Strategy = "one_for_one"
    intensity: int = PROGRAM_INTENSITY
    period: float = PROGRAM_PERIOD
    max_in_flight: int = 10_000
    call_timeout: float = 300.0


class ModuleProxy:
    """Stands in for a sub-module inside a served composite: calling it calls its actor.

    The call inherits the running call's context (trace id, deadline, overrides). On a
    forward greenlet the wait for the reply parks the greenlet (its actor serves on).
    """

    # Tells composites such as BestOfN that calls to this sub-module run on its own actor,
    # so several may be made at once (dspy_actors.modules._fan_out.is_served).
    is_actor_proxy = True

    def __init__(
        self,
        registry: supervisors.Registry,
        name: str,
        path: str,
        timeout: float,
        gone: Callable[[], str | None] = never_stopped,
    ):
        self._registry = registry
        self._name = name
        self.path = path
        self._timeout = timeout
        self._gone = gone

    def __call__(self, **inputs: Any) -> Any:
        return call_resending(
            self._registry,
            self._name,
            inputs,
            capture(),
            self.path,
            timeout=self._timeout,
            what="sub-module",
            stopped=self._gone,
        )

    forward = __call__

    def __repr__(self) -> str:
        return f"ModuleProxy({self.path!r})"


def actor_class(module: Any) -> type[ModuleActor]:
    """The actor serving ``module``: a :class:`ForwardActor` if its forward runs on
    greenlets (any module but a predictor, whose steps are driven by messages, or one with
    ``blocking_forward = True``, which gets a call thread per call for a forward that
    blocks on I/O of its own); a plain :class:`ModuleActor` otherwise."""
    if is_predictor(module) or getattr(module, "blocking_forward", False):
        return ModuleActor
    return ForwardActor


def direct_sub_modules(module: Module) -> list[tuple[str, Module]]:
    """The sub-modules directly beneath ``module`` (attribute paths like ``retrieve``,
    ``hops[0]``), not those nested inside them."""
    found = module.attribute_sub_modules()[1:]
    direct: list[tuple[str, Module]] = []
    for path, sub in found:
        if not any(path.startswith(p + ".") or path.startswith(p + "[") for p, _ in direct):
            direct.append((path, sub))
    return direct


def _replace_at(shell: Any, path: str, value: Any) -> None:
    """Set the attribute (or list/dict item) at ``path`` (as Module walks name them)."""
    head, _, rest = path.partition("[")
    if not rest:
        setattr(shell, head, value)
        return
    container = getattr(shell, head)
    keys = ["[" + part for part in ("[" + rest).split("[")[1:]]
    for key in keys[:-1]:
        container = container[_index(key)]
    last = _index(keys[-1])
    if isinstance(container, tuple):
        raise TypeError(f"cannot serve sub-module at {path!r}: it sits in a tuple; use a list")
    container[last] = value


def _index(key: str) -> Any:
    inner = key[1:-1]
    if inner.isdigit():
        return int(inner)
    import ast

    return ast.literal_eval(inner)  # dict keys are written with repr(): literals only


def _shell(module: Module, proxies: Mapping[str, ModuleProxy]) -> Module:
    """A copy of ``module`` whose direct sub-modules are proxies to their actors."""
    shell = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, list | dict):
            setattr(shell, name, copy.copy(value))
    for path, proxy in proxies.items():
        _replace_at(shell, path, proxy)
    return shell


def module_subtree(
    child_id: str,
    path: str,
    module: Module,
    name_prefix: str,
    services: ModuleServices,
    options: TreeOptions,
    program: str = "",
) -> supervisors.ChildSpec:
    """A ChildSpec serving ``module`` at ``path``: one actor, or a subtree for a composite.

    The serving actor is registered as ``name_prefix + path`` (``path`` "" for the root);
    errors name it as ``program.path``.
    """
    label = f"{program}.{path}" if program and path else (path or program or "<root>")
    registry = services.registry
    entry_name = name_prefix + path
    subs = [] if is_predictor(module) else direct_sub_modules(module)
    template = module.deepcopy()
    if not subs:
        return supervisors.ChildSpec(
            child_id,
            actor_class(module),
            args=(label, template.deepcopy, services, options.max_in_flight, path),
            name=entry_name,
        )
    children = []
    proxies: dict[str, ModuleProxy] = {}
    for sub_path, sub in subs:
        full = f"{path}.{sub_path}" if path else sub_path
        children.append(
            module_subtree(sub_path, full, sub, name_prefix, services, options, program)
        )
        proxies[sub_path] = ModuleProxy(
            registry, name_prefix + full, full, options.call_timeout, services.gone
        )
    shell = _shell(template, proxies)
    children.append(
        supervisors.ChildSpec(
            ENTRY if not path else "forward",
            actor_class(module),
            args=(label, partial(copy.copy, shell), services, options.max_in_flight, None),
            name=entry_name,
        )
    )
    return supervisors.Supervisor.child_spec(
        child_id,
        children,
        strategy=options.strategy,
        intensity=options.intensity,
        period=options.period,
        registry=registry,
        label=name_prefix + path if path else name_prefix.rstrip("/"),
    )


# --- program steps ---------------------------------------------------------------------


StepSpec = tuple[str, Any, Mapping[str, Any]] | tuple[str, Any]


def accepted_inputs(module: Module) -> frozenset[str] | None:
    """The input names a step takes: its signature's inputs for a predictor, the keyword
    parameters of ``forward`` otherwise; None if it takes any (``**kwargs``)."""
    signature = getattr(module, "signature", None)
    if is_predictor(module) and signature is not None:
        return frozenset(signature.input_fields)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def instantiate_step(step: Sequence[Any]) -> tuple[str, Module]:
    """``(id, ModuleClass, kwargs)``, ``(id, factory, kwargs)`` or ``(id, module)``."""
    if not isinstance(step, tuple | list) or len(step) not in (2, 3):
        raise TypeError(f"a program step is (id, module class or instance[, kwargs]), got {step!r}")
    step_id, target = step[0], step[1]
    kwargs: Mapping[str, Any] = step[2] if len(step) == 3 else {}
    if not isinstance(step_id, str) or not step_id or "/" in step_id:
        raise ValueError(f"a step id is a non-empty string without '/', got {step_id!r}")
    if isinstance(target, Module):
        if kwargs:
            raise TypeError(f"step {step_id!r}: kwargs given for a module instance")
        return step_id, target
    if callable(target):
        try:
            module = target(**kwargs)
        except TypeError as exc:  # its arguments: name the step and where they go
            name = getattr(target, "__name__", type(target).__name__)
            given = ", ".join(f"{k}=..." for k in kwargs)  # names only: values may be secret
            raise TypeError(
                f"step {step_id!r}: {name}({given}) failed: {exc}; a step's "
                f"arguments go in its third item, e.g. ({step_id!r}, {name}, "
                "{'signature': 'question -> answer'})"
            ) from exc
        if not isinstance(module, Module):
            raise TypeError(f"step {step_id!r}: {target!r} made {module!r}, not a Module")
        return step_id, module
    raise TypeError(f"step {step_id!r}: expected a Module class, factory or instance")
