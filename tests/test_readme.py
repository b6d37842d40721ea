"""The README's code snippets run as written (STYLE §8), and its commands name real flags."""

from __future__ import annotations

import re

from qlinkmed.client.cli import build_parser
from tests.paths import REPO

README = (REPO / "README.md").read_text()


def test_python_snippets_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_every_flag_in_the_sim_table_exists() -> None:
    flags = set(re.findall(r"^\| `(--[a-z0-9-]+)", README, flags=re.M))
    assert "--qubits" in flags
    parser = build_parser()
    known = {
        f"--{name.replace('_', '-')}"
        for protocol in ("bb84", "e91")
        for name in vars(parser.parse_args(["sim", protocol]))
    }
    assert flags <= known, flags - known
