"""The import boundaries between layers, read from the sources (every import, including those inside
functions, except under ``if TYPE_CHECKING:``):

- qcore imports nothing of qlinkd or the client;
- the sans-IO machines (the link machine, the data-plane session's two machines) reach no asyncio,
  sqlite3, socket, ssl or aiohttp, directly or through anything of ours they import;
- the daemon never imports the quantum-channel service or the testbed;
- no module of ours imports itself back through a cycle;
- only the two wire modules (link, data plane) import the generated protobuf code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO

PACKAGES = {
    "qcore": "qlinkmed.qcore",
    "qlinkd": "qlinkmed.qlinkd",
    "client": "qlinkmed.client",
    "proto": "qlinkmed.proto",
}
SANS_IO = (
    "qlinkmed.qlinkd.link.machine",
    "qlinkmed.qlinkd.dataplane.send_machine",
    "qlinkmed.qlinkd.dataplane.receive_machine",
)
IO_MODULES = {"asyncio", "sqlite3", "socket", "ssl", "selectors", "aiohttp"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, dotted in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [dotted, *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                yield from _imports(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _targets(module: str) -> set[str]:
    """Every module `module` imports: ours by full dotted name, others by their top-level name."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
        found.update(submodules)
        # `from package import module` names the module; the package itself counts only for other names.
        if len(submodules) < len(node.names):
            found.add(base)
    return {name if name in MODULES else _owner(name) for name in found}


def _owner(name: str) -> str:
    """The module of ours that `name` lies in (a.b.c -> the longest known prefix), else its top level."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return parts[0]


GRAPH = {module: _targets(module) for module in MODULES}


def _closure(start: str) -> set[str]:
    """Everything `start` imports, directly or through modules of ours."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        for target in GRAPH.get(current, ()):
            if target not in seen:
                seen.add(target)
                if target in MODULES:
                    todo.append(target)
    return seen


def test_the_graph_is_read() -> None:
    # A parser that silently found nothing would pass every rule below.
    assert "qlinkmed.qlinkd.link.machine" in MODULES
    assert "qlinkmed.qlinkd.pool.values" in GRAPH["qlinkmed.qlinkd.link.machine"]
    assert "asyncio" in GRAPH["qlinkmed.qlinkd.link.peer_link"]


def test_qcore_imports_nothing_of_qlinkd_or_the_client() -> None:
    offences = {
        (module, target)
        for module, targets in GRAPH.items()
        if module.startswith("qlinkmed.qcore")
        for target in targets
        if target.startswith(("qlinkmed.qlinkd", "qlinkmed.client"))
    }
    assert offences == set()


@pytest.mark.parametrize("machine", SANS_IO)
def test_the_sans_io_machines_reach_no_io(machine: str) -> None:
    # A machine renamed or moved must fail here, not drop out of the check unnoticed.
    assert machine in MODULES, f"{machine} is listed as sans-IO but no such module exists"
    reached = _closure(machine)
    ours = sorted(m for m in {machine} | reached if m in MODULES)
    culprits = [(m, sorted(GRAPH[m] & IO_MODULES)) for m in ours if GRAPH[m] & IO_MODULES]
    assert reached & IO_MODULES == set(), culprits


def test_the_daemon_imports_neither_the_channel_service_nor_the_testbed() -> None:
    reached = _closure("qlinkmed.qlinkd.main") | _closure("qlinkmed.qlinkd.daemon")
    forbidden = {m for m in reached if m.startswith(("qlinkmed.qlinkd.channel", "qlinkmed.qlinkd.testbed"))}
    assert forbidden == set()


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over our modules; any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in MODULES or target == node:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def test_only_the_wire_modules_touch_protobuf() -> None:
    # STYLE §2: one module per protocol converts between protobuf and typed messages; nothing else sees pb2.
    touching = {module for module, targets in GRAPH.items() if "qlinkmed.proto.qlinkmed_wire_pb2" in targets}
    assert touching == {"qlinkmed.qlinkd.link.wire", "qlinkmed.qlinkd.dataplane.wire"}
