"""The import rules of docs/ARCHITECTURE.md, checked on the source (parsed with ``ast``, every
import: at the top, in functions, under TYPE_CHECKING):

- ``supervisors`` never imports ``dspy_actors``;
- nothing below ``runtime`` imports Pykka;
- inside ``dspy_actors``, a part imports only parts of its own layer or below.

A rule broken on purpose for now is listed in ``KNOWN_EXCEPTIONS`` with its reason; the
test fails when a new one appears, and also when a listed one is gone (delete its line).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The layers of dspy_actors, bottom first: a part may import its own layer and those below.
# Top-level modules are parts too ("_settings" is dspy_actors/_settings.py).
LAYERS: tuple[frozenset[str], ...] = (
    # _sqlite_file and _postgres_url: the store files' and URLs' helpers shared by the LM
    # cache (lm) and the runtime's stores; they import no part of dspy_actors.
    frozenset(
        {
            "redaction",
            "_settings",
            "_callbacks",
            "waiting",
            "_sqlite_file",
            "_postgres_url",
            "_asyncify",
            "_stop_hooks",
            "_deferred_imports",
        }
    ),
    frozenset({"lm", "signatures", "mcp", "_embedder"}),
    frozenset({"primitives", "streaming"}),
    frozenset({"adapters"}),
    frozenset({"modules"}),
    frozenset({"runtime"}),
    frozenset({"evaluate"}),
    frozenset({"optimizers", "distributed"}),
    # Views of a running app: the console, /metrics and tracing read the runtime's events.
    frozenset({"console", "metrics", "tracing"}),
    # Above everything: the package's front, the test kit, the command line and its demo.
    frozenset({"__init__", "testing", "cli", "_demo", "_demo_display"}),
)
RUNTIME_LAYER = 5  # the index of runtime in LAYERS: below it, no Pykka

# (importing file, imported module): rules broken on purpose for now, with the reason.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Violation:
    file: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file} imports {self.imported}: {self.rule}"


def imported_modules(source: str) -> set[str]:
    """Every absolute module a source file imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "dspy_actors":  # ``from dspy_actors import settings``
                found.update(f"dspy_actors.{alias.name}" for alias in node.names)
    return found


def _layer_of(part: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    return None


def violations(root: Path) -> list[Violation]:
    """The import rules broken by the ``supervisors`` and ``dspy_actors`` sources under
    ``root`` (KNOWN_EXCEPTIONS included)."""
    found: list[Violation] = []
    for path in sorted((root / "supervisors").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for module in imported_modules(path.read_text()):
            if module.split(".")[0] == "dspy_actors":
                found.append(Violation(rel, module, "supervisors never imports dspy_actors"))
    for path in sorted((root / "dspy_actors").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        parts = path.relative_to(root / "dspy_actors").with_suffix("").parts
        part = parts[0]
        layer = _layer_of(part)
        if layer is None:
            found.append(Violation(rel, "-", f"{part!r} is in no layer of LAYERS"))
            continue
        for module in imported_modules(path.read_text()):
            names = module.split(".")
            if names[0] == "pykka" and layer < RUNTIME_LAYER:
                found.append(Violation(rel, module, "nothing below runtime imports Pykka"))
            if names[0] != "dspy_actors" or len(names) < 2:
                continue
            target = _layer_of(names[1])
            if target is not None and target > layer:
                found.append(Violation(rel, module, f"{part!r} sits below {names[1]!r} (LAYERS)"))
    return sorted(found, key=str)


def test_the_sources_follow_the_import_rules() -> None:
    broken = {(v.file, v.imported) for v in violations(ROOT)}
    new = sorted(broken - set(KNOWN_EXCEPTIONS))
    assert not new, "import rules broken (docs/ARCHITECTURE.md):\n" + "\n".join(
        f"{file} imports {module}" for file, module in new
    )
    fixed = sorted(set(KNOWN_EXCEPTIONS) - broken)
    assert not fixed, f"no longer broken, delete from KNOWN_EXCEPTIONS: {fixed}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"supervisors/_x.py": "def f():\n    import dspy_actors.lm\n"},
            "supervisors/_x.py imports dspy_actors.lm: supervisors never imports dspy_actors",
        ),
        (
            {"dspy_actors/modules/x.py": "import pykka\n"},
            "dspy_actors/modules/x.py imports pykka: nothing below runtime imports Pykka",
        ),
        (
            {
                "dspy_actors/lm/x.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from dspy_actors.runtime.app import App\n"
                )
            },
            "dspy_actors/lm/x.py imports dspy_actors.runtime.app: "
            "'lm' sits below 'runtime' (LAYERS)",
        ),
        (
            {"dspy_actors/newpart/x.py": "x = 1\n"},
            "dspy_actors/newpart/x.py imports -: 'newpart' is in no layer of LAYERS",
        ),
    ],
)
def test_each_rule_fails_on_a_violation(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    root = _tree(tmp_path, {"dspy_actors/runtime/ok.py": "import pykka\n", **files})
    assert [str(v) for v in violations(root)] == [expected]


def test_imports_within_and_below_a_layer_pass(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "supervisors/_ok.py": "import pykka\n",
            "dspy_actors/runtime/a.py": "import pykka\nfrom dspy_actors.lm import LM\n",
            "dspy_actors/optimizers/b.py": "from dspy_actors import evaluate, runtime\n",
            "dspy_actors/primitives/c.py": "from dspy_actors import settings\n",
        },
    )
    assert violations(root) == []
