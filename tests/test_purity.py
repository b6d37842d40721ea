"""qcore is pure (STYLE §1): no event loop, no network, no files, no clock, no global randomness, and no
entropy of its own (no os, no secrets: the caller passes its sources in, see qcore.randomness)."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.paths import REPO

QCORE = REPO / "qcore"
FORBIDDEN_MODULES = {
    "asyncio",
    "aiohttp",
    "socket",
    "ssl",
    "selectors",
    "time",
    "datetime",
    "random",
    "os",
    "secrets",
}
FORBIDDEN_CALLS = {"open", "print", "input"}


def test_qcore_sources_import_no_io_and_call_no_io() -> None:
    offences = []
    for path in sorted(QCORE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            if isinstance(node, ast.Import | ast.ImportFrom):
                offences += [
                    f"{path.name}:{node.lineno} imports {n}" for n in names if n in FORBIDDEN_MODULES
                ]
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in FORBIDDEN_CALLS
            ):
                offences.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
            # Global numpy randomness (np.random.rand, np.random.seed...) instead of a passed Generator.
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Attribute)
                and isinstance(node.func.value.value, ast.Name)
                and node.func.value.value.id == "np"
                and node.func.value.attr == "random"
                and node.func.attr not in {"default_rng", "Generator", "PCG64", "SeedSequence"}
            ):
                offences.append(f"{path.name}:{node.lineno} uses global np.random.{node.func.attr}")
    assert offences == []


def test_importing_qcore_starts_no_event_loop_machinery() -> None:
    # (The standard library's email package, pulled in by numpy/scipy metadata, imports `socket`
    # without using it; the source check above is the one that binds our own code.)
    code = (
        "import sys\n"
        "import qlinkmed.qcore.sim, qlinkmed.qcore.session, qlinkmed.qcore.channel, qlinkmed.qcore.sweep\n"
        "import qlinkmed.qcore.image.cipher, qlinkmed.qcore.image.circuit, qlinkmed.qcore.image.metrics\n"
        "print([m for m in ('asyncio', 'aiohttp', 'qiskit') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
