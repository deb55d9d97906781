"""No import cycles in the ``taskbeam`` package.

The graph is read from the source with ``ast``: every import, also one inside a
function (a lazy import still makes the two modules depend on each other), but
not those under ``if TYPE_CHECKING:``, which never run. Importing ``a.b.c`` runs
``a/__init__.py`` and ``a/b/__init__.py`` first, so those are edges too, except
for the packages the importing module is itself inside (already running).
"""

import ast
import pathlib

import taskbeam

PACKAGE = pathlib.Path(taskbeam.__file__).parent


def modules():
    """Module name -> (path, is_package) for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("taskbeam", *path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def runtime_imports(tree):
    """The import statements that can run (not those under ``if TYPE_CHECKING:``)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped:
            yield node


def with_packages(target, importer, known):
    """``target`` and the packages above it that importing it runs first."""
    parts = target.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    above = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {target} | {p for p in above if p in known and p not in own}


def import_graph():
    known = modules()
    graph = {}
    for name, (path, is_package) in known.items():
        edges = set()
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                    for alias in node.names
                ]
            for target in targets:
                if target in known:
                    edges |= with_packages(target, name, known)
        graph[name] = edges - {name}
    return graph


def cycles(graph):
    """Every strongly connected component of more than one module (Tarjan's)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_relative_lazy_and_package_imports():
    graph = import_graph()
    assert "taskbeam.protocol" in graph["taskbeam.web.api"]  # from .. import protocol
    assert "taskbeam.web.fastws.listener" in graph["taskbeam.web.fastws"]  # lazy, in a function
    assert "taskbeam.store" in graph["taskbeam.config"]  # from .store.keys: store/__init__ runs
    assert "taskbeam.web.fastws" not in graph["taskbeam.web.fastws.codec"]  # its own package


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph()) == []
