"""`qlink forward list|release`: what the gateways owe the hospital's systems, and releasing what a
destination refused for good. A forward is parked when the PACS, the interface engine or the FHIR server
refuses it in a way retrying cannot fix (a DICOM failure status, HL7 AR, FHIR 4xx); once the operator has
fixed the cause (a missing AE title at the PACS, a mapping in the engine), `release` owes the parked rows
again, in their original order, each release audited with who and why."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from ..data_http import add_data_target, ask_json
from .alarm import operator_name

EXIT_OK, EXIT_USAGE = 0, 2
GATEWAYS = ("dicom", "mllp", "fhir")
STATES = ("pending", "parked", "delivered")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="forward_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the gateways' forwards, oldest first")
    listing.add_argument("--state", choices=STATES, help="only forwards in this state")
    listing.add_argument("--gateway", choices=GATEWAYS, help="only this gateway's forwards")
    listing.add_argument("--destination", metavar="NAME", help="only forwards to this destination")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N rows (100)")
    add_data_target(listing)
    listing.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    listing.set_defaults(run=run_list)
    release = sub.add_parser("release", help="owe a gateway's parked forwards again (after fixing the cause)")
    release.add_argument("gateway", choices=GATEWAYS, metavar="GATEWAY", help="dicom, mllp or fhir")
    release.add_argument("--destination", metavar="NAME", help="only this destination's parked forwards")
    release.add_argument("--transfer", metavar="TRANSFER_ID", help="only this transfer's parked forwards")
    release.add_argument("--note", default="", metavar="TEXT", help="what was fixed (kept in the audit log)")
    add_data_target(release)
    release.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    release.set_defaults(run=run_release)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def format_forwards(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no forwards"
    lines = [
        f"{'GATEWAY':<7} {'DESTINATION':<16} {'STATE':<9} {'TRIES':>5} {'ADDED':<19} TRANSFER / LAST ERROR"
    ]
    for row in rows:
        lines.append(
            f"{row['gateway']:<7} {row['destination'][:16]:<16} {row['state']:<9} {row['attempts']:>5}"
            f" {_when(row['added']):<19} {row['transfer']}"
        )
        if row.get("last_error"):
            lines.append(f"{'':<60}{row['last_error']}")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("qlink forward list: error: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    query = {
        "state": args.state,
        "gateway": args.gateway,
        "destination": args.destination,
        "limit": args.limit,
    }
    encoded = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    answer = ask_json(args, "qlink forward list", "GET", f"/v1/forwards?{encoded}", None)
    if isinstance(answer, int):
        return answer
    print(json.dumps(answer) if args.json else format_forwards(answer["forwards"]))
    return EXIT_OK


def run_release(args: argparse.Namespace) -> int:
    request = {
        "gateway": args.gateway,
        "destination": args.destination,
        "transfer": args.transfer,
        "note": args.note,
        "who": operator_name(),
    }
    answer = ask_json(
        args, "qlink forward release", "POST", "/v1/forwards/release", json.dumps(request).encode()
    )
    if isinstance(answer, int):
        return answer
    if args.json:
        print(json.dumps(answer))
    else:
        released = answer["released"]
        print(f"{len(released)} parked forward(s) owed again" if released else "nothing was parked there")
        for row in released:
            print(f"  {row['gateway']} -> {row['destination']}: {row['transfer']} (was: {row['last_error']})")
    return EXIT_OK
