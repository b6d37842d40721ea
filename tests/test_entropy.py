"""The daemon draws its randomness through one audited function (issue 14, item 1), read from the sources:

- outside the quantum-channel emulation (``qlinkd/channel/service.py`` and ``broker.py``: emulated
  photons, losses and detectors, run by a trusted party that knows the photons' states by construction),
  no module of qlinkd imports ``random``,
  ``secrets`` or ``numpy.random``, or touches ``np.random`` (so no seeded, non-cryptographic generator);
- ``os.urandom`` is called in ``qlinkd/ops/entropy.py`` and nowhere else in qlinkd;
- the link machine is built with ``entropy.party_randomness()``;
- qcore's session code (the parties' choices and published seeds) never names a numpy generator.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import REPO

QLINKD = REPO / "qlinkd"
ENTROPY = QLINKD / "ops" / "entropy.py"
# The channel service's own secrets (its admin token) go through ops/entropy like the daemon's.
EMULATED_PHYSICS = {QLINKD / "channel" / "service.py", QLINKD / "channel" / "broker.py"}
FORBIDDEN_IMPORTS = {"random", "secrets", "numpy.random"}
OS_ENTROPY = {"urandom", "getrandom", "getrandom_nonblocking"}
# qcore modules that hold the parties' choices: they see only qcore.randomness sources.
PARTY_CODE = [REPO / "qcore" / name for name in ("session.py", "round_state.py", "sifting.py")]


def offences(tree: ast.AST, *, may_read_os: bool = False) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name in FORBIDDEN_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in FORBIDDEN_IMPORTS:
                found.append(f"imports from {node.module}")
            if node.module == "numpy" and any(a.name == "random" for a in node.names):
                found.append("imports numpy.random")
            if node.module == "os" and not may_read_os and any(a.name in OS_ENTROPY for a in node.names):
                found.append("imports os entropy")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in {"np", "numpy"} and node.attr == "random":
                found.append(f"uses {node.value.id}.random")
            if node.value.id == "os" and node.attr in OS_ENTROPY and not may_read_os:
                found.append(f"calls os.{node.attr}")
    return found


def _daemon_modules() -> list[Path]:
    return [p for p in sorted(QLINKD.rglob("*.py")) if p not in EMULATED_PHYSICS]


def test_the_checker_catches_what_the_daemon_used_to_do() -> None:
    # The code this issue removed from peer_link.py, and the other ways to the same end.
    old = "import secrets\nimport numpy as np\nrng = np.random.default_rng(secrets.randbits(128))\n"
    assert offences(ast.parse(old)) == ["imports secrets", "uses np.random"]
    others = "import os, random\nfrom numpy import random as r\nk = os.urandom(32)\n"
    assert offences(ast.parse(others)) == ["imports random", "imports numpy.random", "calls os.urandom"]
    assert offences(ast.parse("k = os.urandom(32)\n"), may_read_os=True) == []


def test_the_daemon_draws_randomness_only_through_ops_entropy() -> None:
    modules = _daemon_modules()
    assert ENTROPY in modules and QLINKD / "link" / "peer_link.py" in modules  # the scan sees the daemon
    found = {
        str(path.relative_to(REPO)): bad
        for path in modules
        if (bad := offences(ast.parse(path.read_text(), filename=str(path)), may_read_os=path == ENTROPY))
    }
    assert found == {}, (
        "draw randomness through qlinkmed.qlinkd.ops.entropy (random_bytes, token_urlsafe, party_randomness)"
    )


def test_ops_entropy_reads_the_operating_system() -> None:
    tree = ast.parse(ENTROPY.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "urandom"]
    assert len(calls) == 1


def test_the_link_machine_gets_the_os_sources() -> None:
    tree = ast.parse((QLINKD / "link" / "peer_link.py").read_text())
    builds = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "LinkConnection"
    ]
    assert len(builds) == 1
    (randomness,) = [k.value for k in builds[0].keywords if k.arg == "randomness"]
    assert ast.unparse(randomness) == "entropy.party_randomness()"


def test_the_parties_code_in_qcore_never_names_a_generator() -> None:
    for path in PARTY_CODE:
        source = path.read_text()
        assert "np.random" not in source and "Generator" not in source, path.name
