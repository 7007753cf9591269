"""The import graph of ``gateway/`` and ``rooms/`` has no circle (but the known ones, listed).

Every ``import`` and ``from ... import`` counts, wherever it stands: at module level, inside a
function, under ``if TYPE_CHECKING:``. A circle that only type checking sees is still a name
living in the wrong module (docs: STYLE.md, "a circle between modules is a hint").
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("gateway", "rooms")

KNOWN_CIRCLES: list[frozenset[str]] = [
    # None left: a new one fails the test below. (The last, rooms.engine <-> its engines, ended
    # when open_engine moved into rooms/engines/__init__.py and the value types into
    # rooms/messages.py.)
]


def modules() -> dict[str, Path]:
    """Every module of PACKAGES by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _nearest(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                # ``from gateway import tickets`` imports the module gateway.tickets.
                submodule = f"{base}.{alias.name}"
                yield from ([submodule] if submodule in known else _nearest(base, known))


def _nearest(name: str, known: dict[str, Path]) -> Iterator[str]:
    """``name``, or the closest package above it, if it is one of ``known``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            yield candidate
            return
        parts.pop()


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: {target for target in imported(module, path, known) if target != module}
            for module, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def describe(circle: frozenset[str], edges: dict[str, set[str]]) -> str:
    ties = [f"{a} -> {b}" for a in sorted(circle) for b in sorted(edges[a] & circle)]
    return "{" + ", ".join(sorted(circle)) + "}: " + "; ".join(ties)


def test_the_gateway_package_has_no_circle() -> None:
    edges = graph()
    in_gateway = [c for c in circles(edges) if any(m.split(".")[0] == "gateway" for m in c)]
    assert in_gateway == [], "\n".join(describe(c, edges) for c in in_gateway)


def test_the_only_circles_are_the_known_ones() -> None:
    """A new circle fails; so does a known one that is gone or changed while still listed in
    KNOWN_CIRCLES (update the list: it only shrinks)."""
    edges = graph()
    found = circles(edges)
    new = [c for c in found if c not in KNOWN_CIRCLES]
    gone = [c for c in KNOWN_CIRCLES if c not in found]
    assert new == [], "new circle(s): " + "\n".join(describe(c, edges) for c in new)
    assert gone == [], ("no longer a circle as listed: remove or update it in KNOWN_CIRCLES: "
                        + "; ".join(sorted(map(str, map(sorted, gone)))))


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The reader itself: module-level, function-level, TYPE_CHECKING, ``from package import
    module`` and relative imports all make edges, and a circle through them is found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .c import thing\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    import pkg.a\n")
    (package / "d.py").write_text("import pkg.a\n")
    known = {name: package / f"{name.split('.')[-1]}.py" for name in
             ("pkg.a", "pkg.b", "pkg.c", "pkg.d")}
    known["pkg"] = package / "__init__.py"
    edges = {m: set(imported(m, p, known)) - {m} for m, p in known.items()}
    assert edges == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"},
                     "pkg.d": {"pkg.a"}}
    assert circles(edges) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]



# Test modules that still share helpers with others, to move into a support module once the
# work in progress on them has landed (issue 25, item 3): the page's scripted-room helpers
# (tests/e2e/test_protocol_mock.py, test_refusals.py; the page work adds more), and the room
# state's test helpers (tests/rooms/test_state.py, being reworked). Entries only ever go.
SHARING_TEST_MODULES = ("tests.e2e.", "tests.rooms.test_typing")


def test_no_test_module_imports_another() -> None:
    """What tests share lives in support modules (``tests/support.py``, ``clients.py``,
    ``audit.py``, ``startup.py``, a tier's ``harness.py``), not in a test module: importing one
    ties its tier to the importer's and hides the helper where nobody looks for it."""
    known = {".".join(path.relative_to(REPO).with_suffix("").parts): path
             for path in sorted((REPO / "tests").rglob("test_*.py"))}
    offenders = sorted({f"{module} imports {target}" for module, path in known.items()
                        if not module.startswith(SHARING_TEST_MODULES)
                        for target in imported(module, path, known) if target != module})
    assert offenders == [], "move the shared names into a support module"
