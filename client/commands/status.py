"""`qlink status`: the health of every QKD link of one facility daemon, read from its local API."""

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
    answer = ask_local(args, "status", "/v1/status")
    if isinstance(answer, int):
        return answer
    text, status = answer
    if args.json:
        print(text.rstrip("\n"))
    else:
        print(format_status(status, _key_sizes(status)))
    return EXIT_OK


def _key_sizes(status: Any) -> dict[str, int]:
    # One KME key size per facility: every pool is counted in it.
    if not isinstance(status, dict) or "key_size_bits" not in status:
        return {}
    size = int(status["key_size_bits"])
    return {
        link["peer"]: size for link in status.get("links", []) if isinstance(link, dict) and "peer" in link
    }


def _bits(value: Any) -> str:
    return "-" if value is None else f"{value:,} bits"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_last_round(r: dict[str, Any] | None) -> str:
    """One line for the last round of a link: outcome, QBER, CHSH, key bits and duration."""
    if not r:
        return "none yet"
    outcome = "established" if r.get("established") else f"ABORTED ({r.get('reason')})"
    chsh = r.get("chsh_s")
    parts = [
        f"QBER {_percent(r.get('qber'))} (upper bound {_percent(r.get('qber_upper'))})",
        *([f"CHSH {chsh:.3f}"] if chsh is not None else []),
        f"{r.get('final_key_bits', 0):,} key bits",
        f"{r.get('duration_s', 0.0):.3f} s",
    ]
    return f"#{r.get('round')} {outcome}: " + ", ".join(parts)


def format_link(link: dict[str, Any], key_size: int | None) -> list[str]:
    pool = link.get("pool_bits")
    in_keys = f" = {pool // key_size:,} keys of {key_size} bits" if key_size and pool is not None else ""
    peer_state = "peer connected" if link.get("connected") else "peer NOT connected"
    channel_state = "channel connected" if link.get("channel_connected") else "channel NOT connected"
    rounds = link.get("rounds", {})
    last = link.get("last_round")
    rows = [
        ("role", f"{link.get('role')} ({link.get('protocol')})"),
        ("state", f"{link.get('state')}; {peer_state}, {channel_state}"),
        (
            "pool",
            f"{_bits(pool)}{in_keys} (watermarks {link.get('low_watermark_bits', 0):,}"
            f"..{link.get('high_watermark_bits', 0):,})",
        ),
        ("auth reserve", _bits(link.get("auth_reserve_bits"))),
        ("rounds", f"{rounds.get('established', 0):,} established, {rounds.get('aborted', 0):,} aborted"),
        ("last round", format_last_round(last)),
    ]
    if last and not last.get("established") and last.get("detail"):
        rows.append(("", last["detail"]))
    if link.get("alarm"):
        suspicion = "eavesdropping or tampering suspected; the next established round clears it"
        rows.append(("ALARM", f"{link['alarm']}: {suspicion}"))
    rows.append(
        (
            "starvation",
            "STARVED: authentication key exhausted, key generation halted"
            if link.get("auth_starved")
            else "no",
        )
    )
    return [f"link {link.get('peer')}"] + [f"  {k:<14}{v}" for k, v in rows]


def format_status(status: dict[str, Any], key_sizes: dict[str, int] | None = None) -> str:
    """The human view of GET /v1/status: a header line, then one block per link."""
    key_sizes = key_sizes or {}
    saes = ", ".join(status.get("saes", [])) or "none"
    lines = [f"facility {status.get('facility')}, up {status.get('uptime_s', 0):.0f} s, SAEs: {saes}"]
    links = status.get("links", [])
    if not links:
        lines.append("no links configured")
    for link in links:
        lines.append("")
        lines.extend(format_link(link, key_sizes.get(link.get("peer", ""))))
    return "\n".join(lines)
