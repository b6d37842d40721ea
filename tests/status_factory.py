"""One link's status as the daemon reports it, for tests of what reads or prints it: every field set to
a plausible idle BB84 link, and each test changes only what it is about."""

from __future__ import annotations

import dataclasses
from typing import Any

from qlinkmed.qlinkd.link.status import LinkStatus, RoundCounts

_DEFAULT = LinkStatus(
    peer="hospital-b",
    role="alice",
    protocol="bb84",
    eps_sec=1e-10,
    eps_cor=1e-10,
    eps=2e-10,
    connected=True,
    channel_connected=True,
    state="up",
    pool_bits=4096,
    pool_bits_owned=2048,
    auth_reserve_bits=4096,
    low_watermark_bits=1,
    high_watermark_bits=2,
    rounds_paused=False,
    last_committed_round=1,
    rounds=RoundCounts(established=1, aborted=0),
    last_round=None,
    alarm=None,
    auth_starved=False,
)


def link_status(**changes: Any) -> LinkStatus:
    return dataclasses.replace(_DEFAULT, **changes)
