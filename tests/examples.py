"""The shipped facility examples (systemd/examples) as a base for configuration tests: the examples enable
every gateway, so a test that adds its own gateway tables starts from the part before them."""

from __future__ import annotations

from tests.paths import REPO

EXAMPLES = REPO / "systemd" / "examples"
GATEWAYS_MARKER = "# ---- hospital gateways"
"""The line in hospital-a.toml after which only gateway tables follow."""


def example_without_gateways(name: str = "hospital-a.toml") -> str:
    """The example `name` up to its gateway tables."""
    text = (EXAMPLES / name).read_text()
    head, marker, _ = text.partition(GATEWAYS_MARKER)
    if not marker:
        raise ValueError(f"{name} has no {GATEWAYS_MARKER!r} line")
    return head
