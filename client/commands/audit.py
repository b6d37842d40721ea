"""`qlink audit verify`: check a facility's audit log, its hash chain and the heads its peers anchored.

The chain shows a record edited, inserted or removed in the middle. It cannot show records cut off the
end, or a stretch rewritten with every later line re-hashed: those only show against a copy of the head
kept elsewhere, and each peer facility keeps one (``qlinkd/link/anchor.py``). So the command asks the
running daemon for a fresh exchange with every connected peer and checks that the log still holds each
head a peer holds of it.

Exit codes: 0 the log verifies (chain and at least one peer's anchor); 1 the chain is broken or the log
unreadable; 2 usage; 3 the log no longer holds a head a peer anchored (tail missing, or rewritten);
4 the chain is intact but no anchor could be checked (daemon unreachable, no peer anchor).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..daemon_http import CONFIG_ENV, ApiError, TargetError, facility_config
from ..data_http import DataTarget, error_message, token_path

if TYPE_CHECKING:
    from qlinkmed.qlinkd.ops.audit import Anchor, AuditHead
    from qlinkmed.qlinkd.ops.config import FacilityConfig

EXIT_OK = 0
EXIT_CHAIN = 1
EXIT_USAGE = 2
EXIT_ANCHOR = 3
EXIT_UNCHECKED = 4
ANSWER_TIMEOUT_S = 10.0
"""The daemon waits up to 3 s for its peers (local_api.ANCHOR_WAIT_S)."""
_PROG = "qlink audit verify"
_BLIND = (
    "the chain alone cannot show records cut off the end, or a log rewritten with its chain rebuilt: "
    "only the heads the peers anchored can"
)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    verify = sub.add_parser(
        "verify",
        help="check the audit log's hash chain and the heads the peers anchored",
        description="Check this facility's audit log: every line parses, seq counts up by one, prev "
        "chains; then, through the running daemon, that the log still holds the head each peer keeps of "
        "it. Exit 0 verified, 1 chain broken, 3 anchor mismatch, 4 anchors not checked.",
    )
    verify.add_argument(
        "--config", type=Path, metavar="FILE", help=f"facility configuration (default: ${CONFIG_ENV})"
    )
    verify.add_argument(
        "--offline",
        action="store_true",
        help="check the chain only, without the daemon (cannot detect truncation or a rebuilt chain)",
    )
    verify.add_argument(
        "--peer-log",
        type=Path,
        metavar="FILE",
        help="instead, check a copy of a peer's audit log against every head of it recorded in ours",
    )
    verify.set_defaults(run=run_verify)


def _fail(code: int, what: str, message: str) -> int:
    print(f"{_PROG}: {what}: {message}", file=sys.stderr)
    return code


def run_verify(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.ops.audit import AUDIT_FILE

    path = args.config or os.environ.get(CONFIG_ENV)
    if not path:
        return _fail(EXIT_USAGE, "error", f"say which facility: --config FILE or ${CONFIG_ENV}")
    try:
        config = facility_config(Path(path))
    except TargetError as exc:
        return _fail(EXIT_USAGE, "error", exc.message)
    log_path = config.state_dir / AUDIT_FILE
    if args.peer_log is not None:
        return _verify_peer_log(config, log_path, args.peer_log)
    if args.offline:
        code, head = _check(log_path, ())
        if head is not None:
            print(f"audit log {log_path}: {head.seq} records, chain intact (offline: {_BLIND})")
        return code
    anchors, problem = _ask_daemon(config)
    code, head = _check(log_path, anchors)
    if head is None:
        return code
    print(f"audit log {log_path}: {head.seq} records, chain intact")
    peers = [a for a in anchors if a.holder != _DAEMON]
    for anchor in peers:
        print(f"  anchored at {anchor.holder}: seq {anchor.head.seq} ({anchor.head.digest[:16]}...) matches")
    if problem is not None or not peers:
        reason = problem or "no peer holds an anchor of this log yet (none connected since it started?)"
        return _fail(EXIT_UNCHECKED, "anchors NOT CHECKED", f"{reason}; {_BLIND}")
    print("audit log verified")
    return EXIT_OK


_DAEMON = "the running daemon"
"""The holder named for the daemon's own head: it must be in the file the daemon writes."""


def _ask_daemon(config: FacilityConfig) -> tuple[list[Anchor], str | None]:
    """The anchors to check (each peer's copy of our head, and the daemon's own), or a reason there are
    none."""
    from qlinkmed.qlinkd.ops.audit import Anchor

    url = f"http://{config.listen.local}"
    try:
        token = token_path(config).read_text().strip()
    except OSError as exc:
        return [], f"cannot read the local API token {token_path(config)}: {exc.strerror or exc}"
    try:
        status, body = DataTarget(url, token).json("GET", "/v1/audit/anchors", timeout=ANSWER_TIMEOUT_S)
    except ApiError as exc:
        return [], f"cannot reach qlinkd at {url}: {exc.reason}"
    if status != 200 or not isinstance(body, dict):
        return [], f"qlinkd at {url} refused: {error_message(status, body)}"
    try:
        anchors = [Anchor(holder=_DAEMON, head=_head(body["head"]))]
        for peer in body["peers"]:
            if peer["anchor"] is not None:
                anchors.append(Anchor(holder=str(peer["peer"]), head=_head(peer["anchor"])))
            else:
                state = "connected" if peer["connected"] else "not connected"
                print(f"  {peer['peer']}: holds no anchor of this log ({state})", file=sys.stderr)
            if peer["anchor"] is not None and not peer["answered"]:
                print(
                    f"  {peer['peer']}: did not answer now; checking the anchor it held "
                    f"{peer['age_s']:.0f} s ago",
                    file=sys.stderr,
                )
    except (KeyError, TypeError, ValueError) as exc:
        return [], f"qlinkd at {url} answered something that is no anchor list ({exc!r})"
    return anchors, None


def _head(value: Any) -> AuditHead:
    from qlinkmed.qlinkd.ops.audit import AuditHead

    seq, digest = value["seq"], value["digest"]
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise ValueError(f"not a head: {value!r}")
    return AuditHead(seq=seq, digest=digest)


def _check(log_path: Path, anchors: list[Anchor] | tuple[()]) -> tuple[int, AuditHead | None]:
    """(exit code, head) of checking the log at `log_path`; the head is None after printing a failure."""
    from qlinkmed.qlinkd.errors import AuditAnchorError, AuditError
    from qlinkmed.qlinkd.ops.audit import verify

    try:
        return EXIT_OK, verify(log_path, anchors=anchors)
    except OSError as exc:
        return _fail(EXIT_CHAIN, "cannot read the log", f"{log_path}: {exc.strerror or exc}"), None
    except AuditAnchorError as exc:
        return _fail(EXIT_ANCHOR, "ANCHOR MISMATCH", f"{log_path}: {exc.message}"), None
    except AuditError as exc:
        where = f"line {exc.line}" if exc.line is not None else "the log"
        return _fail(EXIT_CHAIN, "CHAIN BROKEN", f"{log_path} {where}: {exc.message}"), None


def _verify_peer_log(config: FacilityConfig, log_path: Path, peer_log: Path) -> int:
    """A copy of a peer's log, checked against every head of it that our log recorded."""
    from qlinkmed.qlinkd.ops.audit import peer_anchors

    peer = _facility_of(peer_log)
    if peer is None or peer not in {p.id for p in config.peers}:
        known = ", ".join(p.id for p in config.peers) or "none"
        return _fail(EXIT_USAGE, "error", f"{peer_log} is no audit log of a peer of ours ({known})")
    try:
        anchors = peer_anchors(log_path, peer)
    except OSError as exc:
        return _fail(EXIT_CHAIN, "cannot read our log", f"{log_path}: {exc.strerror or exc}")
    code, head = _check(peer_log, anchors)
    if head is None:
        return code
    print(f"{peer}'s audit log {peer_log}: {head.seq} records, chain intact")
    if not anchors:
        return _fail(EXIT_UNCHECKED, "anchors NOT CHECKED", f"our log holds no head of {peer}'s; {_BLIND}")
    last = anchors[-1].head.seq
    print(f"  all {len(anchors)} heads of it recorded in {log_path} match (the last: seq {last})")
    print(f"{peer}'s audit log verified")
    return EXIT_OK


def _facility_of(path: Path) -> str | None:
    import json

    try:
        with path.open("rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    facility = first.get("facility") if isinstance(first, dict) else None
    return facility if isinstance(facility, str) else None
