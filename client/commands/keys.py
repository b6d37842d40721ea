"""`qlink keys`: the key pool of every link of one facility daemon (sizes and bookkeeping, never keys)."""

from __future__ import annotations

import argparse
from typing import Any

from ..daemon_http import add_local_target, ask_local

EXIT_OK = 0


def register(parser: argparse.ArgumentParser) -> None:
    add_local_target(parser)
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON unchanged")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    answer = ask_local(args, "keys", "/v1/keys")
    if isinstance(answer, int):
        return answer
    text, keys = answer
    print(text.rstrip("\n") if args.json else format_keys(keys))
    return EXIT_OK


def format_pool(facility: str, pool: dict[str, Any]) -> list[str]:
    size = pool.get("key_size_bits")
    rows = [
        ("pool", f"{pool.get('pool_bits', 0):,} bits"),
        (
            f"owned by {facility}",
            f"{pool.get('owned_bits', 0):,} bits: {pool.get('keys_available', 0):,} keys of {size} bits "
            "available to our SAEs",
        ),
        (f"owned by {pool.get('peer')}", f"{pool.get('peer_owned_bits', 0):,} bits"),
        ("auth reserve", f"{pool.get('auth_reserve_bits', 0):,} bits"),
        (
            "last committed",
            f"round {pool.get('last_committed_round')} (pending {pool.get('pending_round')}, "
            f"next {pool.get('next_round')})",
        ),
        ("unacknowledged", f"{pool.get('notices_unacknowledged', 0):,} key notices to the peer"),
    ]
    if "identities_sha256" in pool:
        # Equal at both ends of a healthy link; the prefix is enough to compare by eye.
        rows.append(("pool digest", f"{pool['identities_sha256'][:16]} (compare with the peer's)"))
    width = max(len(k) for k, _ in rows)
    return [f"pool {facility} <-> {pool.get('peer')}"] + [f"  {k:<{width}}  {v}" for k, v in rows]


def format_keys(keys: dict[str, Any]) -> str:
    """The human view of GET /v1/keys: one block per peer."""
    facility = str(keys.get("facility"))
    pools = keys.get("pools", [])
    if not pools:
        return f"facility {facility}: no links configured"
    blocks = ["\n".join(format_pool(facility, pool)) for pool in pools]
    return "\n\n".join(blocks)
