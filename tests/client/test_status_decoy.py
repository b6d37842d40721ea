"""`qlink status` on a bb84-decoy link shows the source next to the security parameters."""

from __future__ import annotations

import dataclasses

from qlinkmed.client.commands.status import format_link
from qlinkmed.qlinkd.link.status import SourceStatus
from tests.status_factory import link_status


def test_the_human_status_names_the_decoy_source() -> None:
    link = link_status(
        protocol="bb84-decoy",
        decoy=SourceStatus(
            intensities=(0.5551, 0.2175, 2e-4), probabilities=(0.1235, 0.522, 0.3545), p_x=0.6919
        ),
    )
    text = "\n".join(format_link(link, None))
    assert "alice (bb84-decoy)" in text
    assert "mu 0.5551, 0.2175, 0.0002; probabilities 0.123, 0.522, 0.354; key basis p_X 0.692" in text
    plain = "\n".join(format_link(dataclasses.replace(link, decoy=None), None))
    assert "decoy source" not in plain
