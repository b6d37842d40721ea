"""`qlink status`: the health of every QKD link of one facility daemon, read from its local API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qlinkmed.qlinkd.errors import StatusFormatError
from qlinkmed.qlinkd.link.status import DataPeerStatus, LinkStatus, RoundRecord, SourceStatus

from ..daemon_http import EXIT_FAILURE, add_local_target, ask_local, link_statuses

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
        return EXIT_OK
    try:
        print(format_status(status, _key_sizes(status)))
    except StatusFormatError as exc:
        print(f"qlink status: error: the daemon's answer is not a status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _key_sizes(status: Any) -> dict[str, int]:
    # One KME key size per facility: every pool is counted in it.
    if not isinstance(status, dict) or "key_size_bits" not in status:
        return {}
    size = int(status["key_size_bits"])
    return {link.peer: size for link in link_statuses(status)}


def _bits(value: int | None) -> str:
    return "-" if value is None else f"{value:,} bits"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _chsh(s: float, lower: float | None) -> str:
    if lower is None:
        return f"CHSH {s:.3f}"
    return f"CHSH {s:.3f} +- {s - lower:.3f}"


def format_last_round(r: RoundRecord | None) -> str:
    """One line for the last round of a link: outcome, QBER, CHSH, key bits and duration."""
    if r is None:
        return "none yet"
    outcome = "established" if r.established else f"ABORTED ({r.reason})"
    parts = [
        f"QBER {_percent(r.qber)} (upper bound {_percent(r.qber_upper)})",
        *([_chsh(r.chsh_s, r.chsh_lower)] if r.chsh_s is not None else []),
        f"{r.final_key_bits:,} key bits",
        f"{r.duration_s:.3f} s",
    ]
    return f"#{r.round} {outcome}: " + ", ".join(parts)


def data_peers(status: Any) -> dict[str, DataPeerStatus]:
    """The data plane's view of each peer in a status answer (none from a daemon without a data plane)."""
    plane = status.get("data_plane") if isinstance(status, dict) else None
    if not isinstance(plane, dict) or "peers" not in plane:
        return {}
    peers = plane["peers"]
    if not isinstance(peers, list):
        raise StatusFormatError("data_plane.peers", f"expected a list, got {type(peers).__name__}")
    return {p.peer: p for p in (DataPeerStatus.from_json(entry) for entry in peers)}


def format_pq_hybrid(data: DataPeerStatus) -> str:
    """The post-quantum hybrid as configured, and what the last data session used."""
    setting = "on (ML-KEM-768 mixed into every data-plane traffic key)" if data.pq_hybrid else "off"
    last = data.last_session
    if last is None:
        used = "no data session yet"
    else:
        keys = f"QKD key and {last.kem}" if last.pq_hybrid else "QKD key alone"
        used = f"last data session ({last.role}, {last.opened_at}): {keys}"
    return f"{setting}; {used}"


def format_source(decoy: SourceStatus) -> str:
    mus = ", ".join(f"{v:g}" for v in decoy.intensities)
    ps = ", ".join(f"{v:.3f}" for v in decoy.probabilities)
    return f"mu {mus}; probabilities {ps}; key basis p_X {decoy.p_x:.3f}"


def format_link(link: LinkStatus, key_size: int | None, data: DataPeerStatus | None = None) -> list[str]:
    pool = link.pool_bits
    in_keys = f" = {pool // key_size:,} keys of {key_size} bits" if key_size else ""
    peer_state = "peer connected" if link.connected else "peer NOT connected"
    channel_state = "channel connected" if link.channel_connected else "channel NOT connected"
    last = link.last_round
    rows = [
        ("role", f"{link.role} ({link.protocol})"),
        ("state", f"{link.state}; {peer_state}, {channel_state}"),
        ("rounds open", f"{link.rounds_in_flight} of {link.rounds_window}"),
        *(
            [("down", f"since {link.down_since}" + (f": {link.down_reason}" if link.down_reason else ""))]
            if link.down_since is not None
            else []
        ),
        (
            "pool",
            f"{_bits(pool)}{in_keys} (watermarks {link.low_watermark_bits:,}..{link.high_watermark_bits:,})",
        ),
        ("auth reserve", _bits(link.auth_reserve_bits)),
        ("security", f"eps_sec {link.eps_sec:.3g}, eps_cor {link.eps_cor:.3g}: keys {link.eps:.4g}-secure"),
        *([("decoy source", format_source(link.decoy))] if link.decoy is not None else []),
        ("rounds", f"{link.rounds.established:,} established, {link.rounds.aborted:,} aborted"),
        ("last round", format_last_round(last)),
    ]
    if last is not None and not last.established and last.detail:
        rows.append(("", last.detail))
    if link.alarm:
        suspicion = "eavesdropping or tampering suspected; the next established round clears it"
        rows.append(("ALARM", f"{link.alarm}: {suspicion}"))
    rows.append(
        (
            "starvation",
            "STARVED: authentication key exhausted, key generation halted" if link.auth_starved else "no",
        )
    )
    if data is not None:
        rows.append(("pq hybrid", format_pq_hybrid(data)))
    return [f"link {link.peer}"] + [f"  {k:<14}{v}" for k, v in rows]


def format_status(status: dict[str, Any], key_sizes: dict[str, int] | None = None) -> str:
    """The human view of GET /v1/status: a header line, then one block per link. StatusFormatError when
    a link entry is not what the daemon sends."""
    key_sizes = key_sizes or {}
    saes = ", ".join(status.get("saes", [])) or "none"
    lines = [f"facility {status.get('facility')}, up {status.get('uptime_s', 0):.0f} s, SAEs: {saes}"]
    links = link_statuses(status)
    data = data_peers(status)
    if not links:
        lines.append("no links configured")
    for link in links:
        lines.append("")
        lines.extend(format_link(link, key_sizes.get(link.peer), data.get(link.peer)))
    return "\n".join(lines)
