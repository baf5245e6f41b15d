"""The library's modules import each other in one direction only: no import circle.

Read from the source (no import side effects): every ``import smtpsubmit.X`` /
``from smtpsubmit[.X] import ...`` at module level forms the graph, which must
be acyclic. Imports under ``if TYPE_CHECKING:`` are type-only and left out.
A lazy import inside a function is how a circle usually hides, so the message
and submission modules may have none.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import smtpsubmit

PACKAGE = Path(smtpsubmit.__file__).parent
NO_LAZY_IMPORTS = (
    "addresses",
    "attachments",
    "compose",
    "envelope",
    "message",
    "mime",
    "prepare",
    "prepared",
    "ready",
    "submit",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the importing package
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        module = f"{base}.{node.module}" if node.module else base
    else:
        module = node.module or ""
    # "from smtpsubmit import ready" names a module; "from smtpsubmit import Message"
    # a name of the package itself.
    return [
        f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
        for alias in node.names
    ]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            pending += [stmt for handler in node.handlers for stmt in handler.body]
    return found


def _all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Module-level and lazy (in-function) imports, bar type-only ones."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and not _under_type_checking(tree, node)
    ]


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    sources = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {
            target
            for node in (_all_imports(tree) if lazy else _module_level_imports(tree))
            for target in _targets(node, package, set(sources))
            if target in sources and target != name
        }
        graph[name] = targets
    return graph


def test_module_level_imports_form_no_circle() -> None:
    # The package __init__ re-exports everything; a module importing it would be a
    # circle through the package, so it is a node like any other.
    order = list(TopologicalSorter(import_graph()).static_order())
    assert order.index("smtpsubmit.prepare") < order.index("smtpsubmit.client")
    assert order.index("smtpsubmit.client") < order.index("smtpsubmit.submit")


def test_lazy_imports_close_no_circle_either() -> None:
    """A lazy import only defers a circle; counted as edges, the graph stays acyclic."""
    list(TopologicalSorter(import_graph(lazy=True)).static_order())


def test_the_graph_check_does_find_a_circle() -> None:
    graph = import_graph()
    graph["smtpsubmit.prepare"] = graph["smtpsubmit.prepare"] | {"smtpsubmit.submit"}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("a planted circle went unnoticed")


def test_message_and_submission_modules_import_nothing_lazily() -> None:
    for name in NO_LAZY_IMPORTS:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        top = set(map(id, _module_level_imports(tree)))
        lazy = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            and id(node) not in top
            and any(t.startswith("smtpsubmit") for t in _targets(node, "smtpsubmit", set()))
            and not _under_type_checking(tree, node)
        ]
        assert not lazy, f"smtpsubmit/{name}.py imports lazily at lines {lazy}"


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    return any(
        isinstance(node, ast.If) and _is_type_checking(node) and target in ast.walk(node)
        for node in tree.body
    )
