"""`qlink status` on a bb84-decoy link shows the source next to the security parameters."""

from __future__ import annotations

from qlinkmed.client.commands.status import format_link
from qlinkmed.qlinkd.link.status import LinkStatus, RoundCounts, SourceStatus


def test_the_human_status_names_the_decoy_source() -> None:
    link = LinkStatus(
        peer="hospital-b",
        role="alice",
        protocol="bb84-decoy",
        eps_sec=1e-10,
        eps_cor=1e-10,
        eps=2e-10,
        connected=True,
        channel_connected=True,
        state="idle",
        pool_bits=0,
        pool_bits_owned=0,
        auth_reserve_bits=4096,
        low_watermark_bits=1,
        high_watermark_bits=2,
        rounds_paused=False,
        last_committed_round=0,
        rounds=RoundCounts(),
        last_round=None,
        alarm=None,
        auth_starved=False,
        decoy=SourceStatus(
            intensities=(0.5551, 0.2175, 2e-4), probabilities=(0.1235, 0.522, 0.3545), p_x=0.6919
        ),
    )
    text = "\n".join(format_link(link, None))
    assert "alice (bb84-decoy)" in text
    assert "mu 0.5551, 0.2175, 0.0002; probabilities 0.123, 0.522, 0.354; key basis p_X 0.692" in text
    plain = "\n".join(
        format_link(
            LinkStatus(**{**{f: getattr(link, f) for f in link.__dataclass_fields__}, "decoy": None}), None
        )
    )
    assert "decoy source" not in plain
