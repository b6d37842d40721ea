"""`qlink ehr send --to FACILITY FILE`: one FHIR JSON resource or HL7 v2 message to a peer facility,
sealed with a one-time pad when the key pool can pay for it (AES-256-GCM otherwise, and the daemon logs
why). Waits for the peer's delivery confirmation unless --no-wait."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

from ..daemon_http import ApiError, TargetError, unreachable
from ..data_http import add_data_target, data_target, error_message
from .send import (
    EXIT_FAILURE,
    EXIT_USAGE,
    add_wait_flags,
    check_file,
    daemon_limits,
    describe,
    exit_code,
    wait_seconds,
)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ehr_command", metavar="ACTION", required=True)
    send = sub.add_parser("send", help="send one FHIR JSON or HL7 v2 message", description=__doc__)
    send.add_argument("--to", required=True, metavar="FACILITY", help="the receiving facility")
    send.add_argument("file", type=Path, metavar="FILE")
    add_wait_flags(send)
    add_data_target(send)
    send.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    send.set_defaults(run=run_send)


def run_send(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.errors import ContentError

    try:
        target = data_target(args)
    except TargetError as exc:
        print(f"qlink ehr send: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data, info = check_file(args.file, daemon_limits(target))
        if info.kind.value not in ("fhir", "hl7"):
            raise ContentError(str(args.file), f"is {info.kind.value}, not an EHR message: use `qlink send`")
    except ContentError as exc:
        print(f"qlink ehr send: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"qlink ehr send: {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    wait = wait_seconds(args)
    query = urllib.parse.urlencode({"to": args.to, "name": args.file.name, "wait": f"{wait:g}"})
    try:
        status, body = target.json("POST", f"/v1/ehr?{query}", body=data, timeout=wait + 30.0)
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE
    if status >= 400 and status != 422:
        print(f"qlink ehr send: {error_message(status, body)}", file=sys.stderr)
        return EXIT_FAILURE
    body["waited"] = wait
    print(json.dumps(body) if args.json else describe(body))
    return exit_code(body)
