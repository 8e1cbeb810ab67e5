"""Whole-program files: ``program.save(dir, save_program=True)`` and ``dspy_actors.load``.

DSPy pickles the program object; loading a pickle runs whatever code the file names. Here
the program is saved as data: for each module its class's *registered name* and its
attributes (sub-modules, signatures with their field types as type names, demos, config,
plain values). Loading looks each class name up in the registry of module classes
(:func:`register_module`, plus this package's own) and each type name in the allow-list
of signature strings plus registered types (:func:`register_type`), then rebuilds the
objects without calling ``__init__``. Nothing in the file is imported or executed, and an
unknown class or type is a clear error naming it. LM clients are never saved (no keys);
the loaded program uses the configured LM, or ``set_lm``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives._parameter import StateError
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["PROGRAM_FILE", "PROGRAM_FORMAT", "load", "register_module", "register_type"]

PROGRAM_FORMAT = "dspy_actors.program"
PROGRAM_FILE = "program.json"
_VERSION = 1
_PACKAGE = "dspy_actors."

_lock = threading.Lock()
_modules: dict[str, type[Module]] = {}
_types: dict[str, Any] = {}


def _class_name(cls: type) -> str:
    """``module.QualName``; for this package's own classes without the underscores that mark
    private modules (``dspy_actors.modules._predict`` is written ``dspy_actors.modules.
    predict``), so a file names the same class however the package's files are arranged."""
    module = cls.__module__
    if module.startswith(_PACKAGE):
        module = ".".join(part.lstrip("_") for part in module.split("."))
    return f"{module}.{cls.__qualname__}"


def register_module(cls: type[Module]) -> type[Module]:
    """Allow ``dspy_actors.load`` to rebuild instances of ``cls`` (usable as a decorator).
    This package's own module classes need no registration."""
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"register_module takes a Module subclass, not {cls!r}")
    with _lock:
        _modules[_class_name(cls)] = cls
    return cls


def register_type(tp: Any, name: str | None = None) -> Any:
    """Allow a type (a pydantic model, an Enum...) in the signatures of loaded programs,
    under its name (as signatures print it) or ``name``."""
    key = name or getattr(tp, "__name__", None)
    if not isinstance(key, str):
        raise TypeError(f"give a name for {tp!r}")
    with _lock:
        _types[key] = tp
    return tp


def _known_module(name: str, extra: Mapping[str, type[Module]]) -> type[Module]:
    found = extra.get(name) or _modules.get(name)
    if found is None and name.startswith(_PACKAGE):
        found = _package_module(name)
    if found is None:
        raise StateError(
            f"the program file names module class {name!r}, which is not registered: "
            "import it and pass it to dspy_actors.load(..., modules=[...]) or decorate it "
            "with @dspy_actors.register_module (loading never imports code named by a file)"
        )
    return found


def _package_module(name: str) -> type[Module] | None:
    """One of this package's own Module classes already imported (never imports)."""
    pending: list[type[Module]] = [Module]
    while pending:
        cls = pending.pop()
        if _class_name(cls) == name and cls.__module__.startswith(_PACKAGE):
            return cls
        pending.extend(cls.__subclasses__())
    return None


# -- saving ---------------------------------------------------------------------------------
def _dump(value: Any, where: str) -> Any:
    from dspy_actors.signatures.signature import SignatureMeta

    if isinstance(value, Module):
        return _dump_module(value, where)
    if isinstance(value, SignatureMeta):
        return {"__signature__": _dump_signature(value)}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Example):
        return {"__example__": to_jsonable(value)}
    if isinstance(value, list):
        return [_dump(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_dump(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise StateError(f"{where}: a dict with non-string keys cannot be saved as data")
        return {"__dict__": {k: _dump(v, f"{where}[{k!r}]") for k, v in value.items()}}
    raise StateError(
        f"{where} holds a {type(value).__name__}, which a whole-program file cannot store "
        "as data; create it in the module's __init__ from plain values, or save only the "
        "learned state with program.save(path)"
    )


def _is_lm_client(value: Any) -> bool:
    from dspy_actors.lm._lm import LM

    return isinstance(value, LM)


def _dump_module(module: Module, where: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, value in vars(module).items():
        if name.startswith("_") and name in ("_usage_meter", "_call_history"):
            continue
        if _is_lm_client(value):
            attributes[name] = None  # never a client or its key: the loader sets the LM
            continue
        attributes[name] = _dump(value, f"{where}.{name}")
    return {"__module__": _class_name(type(module)), "attributes": attributes}


# The default factories a file can name (by these names only).
_FACTORIES: dict[Any, str] = {list: "list", dict: "dict", set: "set", tuple: "tuple", str: "str"}


def _dump_signature(signature: Any) -> dict[str, Any]:
    from dspy_actors.signatures._type_names import annotation_name
    from dspy_actors.signatures.field import MISSING

    fields = []
    for f in signature.fields.values():
        entry: dict[str, Any] = {
            "name": f.name,
            "kind": f.kind,
            "type": annotation_name(f.annotation),
            "typed": f.typed,
            "desc": f.desc,
            "prefix": f.prefix,
        }
        if f.format is not None:
            raise StateError(
                f"signature {signature.__name__}: field {f.name!r} has a format= function, "
                "which a whole-program file cannot store as data"
            )
        if f.default_factory is not None:
            factory = _FACTORIES.get(f.default_factory)
            if factory is None:
                raise StateError(
                    f"signature {signature.__name__}: field {f.name!r} has a default_factory "
                    f"other than {sorted(_FACTORIES.values())}, which a whole-program file "
                    "cannot store as data"
                )
            entry["default_factory"] = factory
        elif f.default is not MISSING:
            entry["default"] = to_jsonable(f.default)
        if f.constraints:
            entry["constraints"] = dict(f.constraints)
        fields.append(entry)
    return {"name": signature.__name__, "instructions": signature.instructions, "fields": fields}


def save_program(program: Module, path: str | os.PathLike[str]) -> None:
    """Write ``program`` (structure and state, as data) to the directory ``path``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("dspy-actors")
    except PackageNotFoundError:
        ours = "unknown"
    payload = {
        "__metadata__": {"format": PROGRAM_FORMAT, "version": _VERSION, "dspy_actors": ours},
        "program": _dump_module(program, "self"),
    }
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise StateError(f"{str(target)!r} is a file; save_program=True saves to a directory")
    target.mkdir(parents=True, exist_ok=True)
    final = target / PROGRAM_FILE
    tmp = target / (PROGRAM_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, final)  # atomic: a crash never leaves a half-written file


# -- loading --------------------------------------------------------------------------------
class _Loader:
    def __init__(self, modules: Mapping[str, type[Module]], types: Mapping[str, Any]) -> None:
        self.modules = modules
        self.types = types

    def value(self, data: Any, where: str) -> Any:
        if isinstance(data, list):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(data)]
        if not isinstance(data, dict):
            return data
        if "__module__" in data:
            return self.module(data, where)
        if "__signature__" in data:
            return self.signature(data["__signature__"], where)
        if "__example__" in data:
            return Example(data["__example__"])
        if "__tuple__" in data:
            return tuple(self.value(v, f"{where}[{i}]") for i, v in enumerate(data["__tuple__"]))
        if "__dict__" in data:
            inner = data["__dict__"]
            return {k: self.value(v, f"{where}[{k!r}]") for k, v in inner.items()}
        raise StateError(f"{where}: unrecognised entry {sorted(data)}")

    def module(self, data: Mapping[str, Any], where: str) -> Module:
        cls = _known_module(str(data["__module__"]), self.modules)
        attributes = data.get("attributes")
        if not isinstance(attributes, dict):
            raise StateError(f"{where}: a module entry needs 'attributes'")
        module = cls.__new__(cls)  # rebuilt from data: __init__ is not run
        for name, value in attributes.items():
            module.__dict__[name] = self.value(value, f"{where}.{name}")
        return module

    def signature(self, data: Mapping[str, Any], where: str) -> Any:
        from dspy_actors.signatures._string_form import SignatureSyntaxError, parse_type_name
        from dspy_actors.signatures.field import MISSING, Field
        from dspy_actors.signatures.signature import make_signature

        fields: dict[str, Any] = {}
        for entry in data.get("fields", []):
            name = entry["name"]
            try:
                annotation = parse_type_name(entry["type"], self.types)
            except SignatureSyntaxError as exc:
                raise StateError(
                    f"{where}: field {name!r} has type {entry['type']!r}, which is not known "
                    "here; register it with dspy_actors.register_type(T) or pass "
                    f"types=[...] to dspy_actors.load ({exc.problem})"
                ) from exc
            constraints = entry.get("constraints") or {}
            fields[name] = (
                annotation,
                Field(
                    entry["kind"],
                    desc=str(entry.get("desc", "")),
                    prefix=str(entry.get("prefix", "")),
                    default=entry.get("default", MISSING),
                    default_factory=_factory(entry.get("default_factory"), where, name),
                    constraints=tuple(sorted(constraints.items())),
                    typed=bool(entry.get("typed", True)),
                ),
            )
        signature = make_signature(fields, data.get("instructions"), str(data.get("name")))
        return signature


def _factory(name: Any, where: str, field: str) -> Any:
    if name is None:
        return None
    for factory, known in _FACTORIES.items():
        if known == name:
            return factory
    raise StateError(f"{where}: field {field!r} names an unknown default_factory {name!r}")


def load(
    path: str | os.PathLike[str],
    *,
    modules: Iterable[type[Module]] = (),
    types: Iterable[Any] = (),
) -> Module:
    """Load a program saved with ``save(path, save_program=True)``. Module classes and
    signature types the file names must be this package's, registered, or passed here;
    nothing named by the file is imported or executed."""
    source = Path(path)
    file = source / PROGRAM_FILE if source.is_dir() else source
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StateError(f"no saved program at {str(source)!r} (expected {file})") from exc
    except json.JSONDecodeError as exc:
        raise StateError(f"{str(file)!r} is not a JSON program file: {exc}") from exc
    meta = payload.get("__metadata__") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != PROGRAM_FORMAT:
        raise StateError(
            f"{str(file)!r} is not a {PROGRAM_FORMAT} file (a state file saved without "
            "save_program=True loads into a program you build: program.load(path))"
        )
    if meta.get("version") != _VERSION:
        raise StateError(f"{str(file)!r} has program version {meta.get('version')!r}")
    with _lock:
        known_types = dict(_types)
    known_types.update({getattr(t, "__name__", str(t)): t for t in types})
    extra = {_class_name(cls): cls for cls in modules}
    program = _Loader(extra, known_types).module(payload["program"], "self")
    return program
