"""`qlink status`: the health of every QKD link of one facility daemon, read from its local API."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from qlinkmed.qlinkd.errors import StatusFormatError
from qlinkmed.qlinkd.link.status import (
    DataPeerStatus,
    LinkStatus,
    QueueStatus,
    RoundRecord,
    SourceStatus,
)

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


def data_queues(status: Any) -> dict[str, QueueStatus]:
    """The data plane's queues per peer (none from a daemon without a data plane, or one that predates
    them)."""
    plane = status.get("data_plane") if isinstance(status, dict) else None
    if not isinstance(plane, dict) or "queues" not in plane:
        return {}
    queues = plane["queues"]
    if not isinstance(queues, list):
        raise StatusFormatError("data_plane.queues", f"expected a list, got {type(queues).__name__}")
    return {q.peer: q for q in (QueueStatus.from_json(entry) for entry in queues)}


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"


def format_queue(q: QueueStatus) -> list[tuple[str, str]]:
    """Rows for one peer's data-plane queues: what waits, what is stuck and why, what was refused, and
    what waits in the inbox."""
    if q.queued:
        queued = f"{q.queued:,} transfer(s), {_size(q.queued_bytes)}, oldest {_age(q.oldest_queued_age_s)}"
        if not q.stuck and not q.failing_since:
            queued += f"; sender {q.sender}"
    else:
        queued = "empty"
    rows = [("queue", queued)]
    failing = f" since {q.failing_since}" if q.failing_since else ""
    if q.stuck:
        rows.append(
            ("STUCK", f"{q.stuck:,} queued longer than {_age(q.stuck_after_s)}; sender: {q.sender}{failing}")
        )
    elif q.failing_since:
        rows.append(("sender", f"FAILING{failing}: {q.sender}"))
    if q.refused:
        rows.append(
            ("REFUSED", f"{q.refused:,} transfer(s) in the last {_age(q.refused_window_s)}, not retried:")
        )
        rows.extend(("", f"{r.transfer_id} at {r.at}: {r.reason}") for r in q.refused_recent)
    held = (
        f"{q.unfetched:,} unfetched, oldest {_age(q.oldest_unfetched_age_s)}"
        if q.unfetched
        else "none unfetched"
    )
    rows.append(("inbox", held))
    return rows


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


def format_link(
    link: LinkStatus,
    key_size: int | None,
    data: DataPeerStatus | None = None,
    queue: QueueStatus | None = None,
) -> list[str]:
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
    latched = link.alarm_latched
    if latched is not None:
        since = f"{latched.reason} since {latched.raised_at} (round {latched.round}"
        if latched.count > 1:
            latest = f"the last {latched.last_reason} at {latched.last_raised_at}"
            since += f"; {latched.count:,} alarming rounds, {latest}"
        rows.append(("ALARM", f"{since}): eavesdropping or tampering suspected"))
        rows.append(("", f"raised until acknowledged: qlink alarm ack --peer {link.peer} --note TEXT"))
        condition = link.alarm or "clear (a round established since)"
        rows.append(("condition", condition))
    elif link.alarm:
        # Acknowledged while rounds still abort (or a daemon that predates latching): the condition alone.
        rows.append(("ALARM", f"{link.alarm}: eavesdropping or tampering suspected"))
    rows.append(
        (
            "starvation",
            "STARVED: authentication key exhausted, key generation halted" if link.auth_starved else "no",
        )
    )
    if data is not None:
        rows.append(("pq hybrid", format_pq_hybrid(data)))
    if queue is not None:
        rows.extend(format_queue(queue))
    return [f"link {link.peer}"] + [f"  {k:<14}{v}" for k, v in rows]


def format_status(status: dict[str, Any], key_sizes: dict[str, int] | None = None) -> str:
    """The human view of GET /v1/status: a header line, then one block per link. StatusFormatError when
    a link entry is not what the daemon sends."""
    key_sizes = key_sizes or {}
    saes = ", ".join(status.get("saes", [])) or "none"
    lines = [f"facility {status.get('facility')}, up {status.get('uptime_s', 0):.0f} s, SAEs: {saes}"]
    links = link_statuses(status)
    data = data_peers(status)
    queues = data_queues(status)
    linked = {link.peer for link in links}
    external = [d for peer, d in data.items() if peer not in linked and d.key_source != "emulated"]
    if not links and not external:
        lines.append("no links configured")
    for link in links:
        lines.append("")
        lines.extend(format_link(link, key_sizes.get(link.peer), data.get(link.peer), queues.get(link.peer)))
    for peer in external:
        lines.append("")
        lines.extend(format_external_peer(peer, queues.get(peer.peer)))
    gateways = status.get("gateways")
    if isinstance(gateways, dict):
        lines.append("")
        lines.extend(format_gateways(gateways))
    lines.extend(format_break_glass(status.get("access")))
    lines.extend(format_gate(status.get("gate")))
    return "\n".join(lines)


def format_gate(gate: object) -> list[str]:
    """The intent gate: its mode and thresholds, what it decided so far and what a decision costs."""
    if not isinstance(gate, dict):
        return []
    counts = gate.get("decisions", {})
    scored = sum(counts.values()) if isinstance(counts, dict) else 0
    lines = [
        "",
        f"gate         {gate['mode']}: step-up from {gate['step_up_at']:.2f},"
        f" refusal from {gate['deny_at']:.2f} ({gate['model']}, {gate['window_days']} days of history)",
        f"  decided    {scored} requests: {counts.get('allow', 0)} allowed,"
        f" {counts.get('step-up', 0)} step-up, {counts.get('deny', 0)} deny",
    ]
    latency = gate.get("latency", {})
    if isinstance(latency, dict) and latency.get("samples"):
        lines.append(
            f"  latency    p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms per request"
        )
    if gate.get("test_clock"):
        lines.append("  TEST CLOCK the gate's time can be set through the API: a testbed, never production")
    return lines


def format_break_glass(access: object) -> list[str]:
    """An alarm line per active break-glass grant (a user reading beyond the roles), until it expires."""
    grants = access.get("break_glass") if isinstance(access, dict) else None
    lines = []
    for grant in grants if isinstance(grants, list) else []:
        left = _age(float(grant["until"]) - time.time())
        lines += [
            "",
            f"BREAK-GLASS  user {grant['name']} ({grant['user']}) reads beyond the roles for {left} more",
        ]
        lines.append(f"  reason      {grant['reason']}; every read is audited as a break-glass read")
    return lines


def format_external_peer(data: DataPeerStatus, queue: QueueStatus | None) -> list[str]:
    """A peer whose keys come from an external KME (`key_source = "etsi014"`): no QKD link here to show,
    only the data plane's view."""
    last = data.last_session
    session = (
        "none since the daemon started" if last is None else f"last opened {last.opened_at} ({last.role})"
    )
    rows = [("keys", f"from an external ETSI GS QKD 014 KME ({data.key_source}); session {session}")]
    rows.append(("pq hybrid", format_pq_hybrid(data)))
    if queue is not None:
        rows.extend(format_queue(queue))
    return [f"peer {data.peer}"] + [f"  {k:<14}{v}" for k, v in rows]


def format_gateways(gateways: dict[str, Any]) -> list[str]:
    """What the gateways owe the hospital's systems, per destination, with the line's oldest and why it
    waits; parked forwards (refused for good) say how to release them."""
    names = [name for name in ("dicom", "mllp", "fhir") if name in gateways]
    lines = [f"gateways {', '.join(names) or 'none'}"]
    now = time.time()
    for d in gateways.get("destinations", []):
        oldest = d.get("oldest_pending")
        waits = f", oldest {_age(now - oldest)}" if d.get("pending") and oldest is not None else ""
        lines.append(
            f"  {d['gateway'] + ' -> ' + d['destination']:<22}{d['pending']:,} pending{waits},"
            f" {d['delivered']:,} delivered, {d['parked']:,} parked"
        )
        if d.get("pending") and d.get("last_error"):
            lines.append(f"  {'':<22}retrying: {d['last_error']}")
        if d.get("parked"):
            lines.append(
                f"  {'':<22}PARKED (refused for good): qlink forward list --state parked;"
                f" after fixing, qlink forward release {d['gateway']} --destination {d['destination']}"
            )
    return lines
