"""`qlink alarm ack`: acknowledge a facility's latched alarms. An alarm, once raised (an eavesdropper's
QBER or CHSH value, a tampered classical message), stays raised through good rounds and restarts until an
operator acknowledges it here; the acknowledgement is audited with who, when and the note."""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from ..data_http import add_data_target, ask_json

EXIT_OK = 0


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="alarm_command", metavar="ACTION", required=True)
    ack = sub.add_parser("ack", help="acknowledge the latched alarm of one link (--peer) or of every link")
    ack.add_argument("--peer", metavar="PEER", help="the peer facility whose link's alarm to acknowledge")
    ack.add_argument("--note", default="", metavar="TEXT", help="why (kept in the audit log)")
    add_data_target(ack)
    ack.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    ack.set_defaults(run=run_ack)


def operator_name() -> str:
    # The name the operator logged in with; the token proves the right to acknowledge, this says who.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def format_ack(body: dict[str, Any]) -> str:
    lines = []
    for entry in body.get("acknowledged", []):
        lines.append(
            f"alarm on link {entry['peer']} acknowledged: {entry['reason']} since {entry['raised_at']}"
            f" ({entry['count']} alarming round(s))"
        )
    for peer in body.get("not_raised", []):
        lines.append(f"link {peer}: no alarm raised")
    return "\n".join(lines) or "no links"


def run_ack(args: argparse.Namespace) -> int:
    request = {"peer": args.peer, "note": args.note, "who": operator_name()}
    body = ask_json(args, "qlink alarm ack", "POST", "/v1/alarm/ack", json.dumps(request).encode())
    if isinstance(body, int):
        return body
    print(json.dumps(body) if args.json else format_ack(body))
    return EXIT_OK
