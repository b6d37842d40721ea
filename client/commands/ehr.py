"""`qlink ehr send --to FACILITY FILE...`: FHIR JSON resources or HL7 v2 messages to a peer facility, one
message a file (`-` reads one from stdin), each sealed with a one-time pad when the key pool can pay for
it (AES-256-GCM otherwise, and the daemon logs why). Waits for the peer's delivery confirmation of each
unless --no-wait.

All the messages of one call go over one connection to the local daemon, one POST /v1/ehr each, in the
order given, and one result line is printed per message as its answer arrives (one JSON object a line
with --json). The daemon checks each message's structure before it queues it and names the problem when
it refuses one; the size limit is checked here first, so an oversized file is not uploaded. A refused or
unreadable message does not stop the others. Exit 0 when every message was delivered (or queued, with
--no-wait), 1 when any failed, 4 when none failed but some were not delivered within --wait, 2 for a
usage error (an unknown peer, a bad --wait): nothing is sent then.

Standard library only here: the message's structure is the daemon's to check, so this command imports
no content parser (pydicom, fhir.resources) and starts in a fraction of the time."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

from ..daemon_http import ApiError, TargetError, unreachable
from ..data_http import DataTarget, add_data_target, data_target, error_message, usage_refusal
from .send import EXIT_FAILURE, EXIT_OK, EXIT_PENDING, EXIT_USAGE, add_wait_flags, describe, wait_seconds

STDIN = "-"
DEFAULT_MAX_EHR_BYTES = 8 << 20
"""The daemon's default limit, used when it does not say (an older daemon: the upload then reports it)."""
_PROG = "qlink ehr send"


class _Refused(Exception):
    """A message not sent: `name` and `problem` make its one line."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ehr_command", metavar="ACTION", required=True)
    send = sub.add_parser(
        "send",
        help="send FHIR JSON or HL7 v2 messages, one a file (- for stdin)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("--to", required=True, metavar="FACILITY", help="the receiving facility")
    send.add_argument(
        "files", nargs="+", metavar="FILE", help="one message a file; - reads one message from stdin"
    )
    send.add_argument(
        "--name",
        metavar="NAME",
        help="the file name the receiver sees for the message read from stdin (default: stdin)",
    )
    add_wait_flags(send)
    add_data_target(send)
    send.add_argument("--json", action="store_true", help="print the daemon's JSON answer, one a line")
    send.set_defaults(run=run_send)


def _usage(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_send(args: argparse.Namespace) -> int:
    if args.files.count(STDIN) > 1:
        return _usage("- (stdin) may be given once")
    if args.name is not None and STDIN not in args.files:
        return _usage("--name names the message read from stdin: give - among the files")
    try:
        target = data_target(args)
    except TargetError as exc:
        return _usage(exc.message)
    try:
        return _send_all(target, args)
    finally:
        target.close()


def _send_all(target: DataTarget, args: argparse.Namespace) -> int:
    wait = wait_seconds(args)
    limit = _max_ehr_bytes(target)
    failed = pending = False
    for index, given in enumerate(args.files):
        try:
            name, data = _read(given, args.name or "stdin", limit)
        except _Refused as exc:
            _report_failure(args, given, f"{exc.name}: {exc.problem}")
            failed = True
            continue
        query = urllib.parse.urlencode({"to": args.to, "name": name, "wait": f"{wait:g}"})
        try:
            status, body = target.json("POST", f"/v1/ehr?{query}", body=data, timeout=wait + 30.0)
        except ApiError as exc:
            print(unreachable("qlinkd", exc), file=sys.stderr)
            _not_sent(args.files[index + 1 :])
            return EXIT_FAILURE
        if usage_refusal(status, body):
            # The call's own arguments are wrong (--to, --wait): every message would be refused alike.
            # It can only be the first POST's answer, so nothing was sent.
            return _usage(body.get("message", "refused"))
        if status >= 400 and status != 422:
            # A refusal of the content names the message itself ("name: problem"); anything else
            # (a token refused, a daemon error) gets its status.
            message = body.get("message") if isinstance(body, dict) else None
            issues = body.get("issues", []) if isinstance(body, dict) and status == 400 else []
            _report_failure(
                args,
                given,
                message if status in (400, 413) and message else error_message(status, body),
                issues=issues if isinstance(issues, list) else [],
            )
            failed = True
            continue
        body["waited"] = wait
        body["file"] = given
        print(json.dumps(body) if args.json else describe(body), flush=True)
        state = body.get("state")
        failed |= state not in ("delivered", "queued")
        pending |= state == "queued" and wait > 0
    if failed:
        return EXIT_FAILURE
    return EXIT_PENDING if pending else EXIT_OK


def _max_ehr_bytes(target: DataTarget) -> int:
    """The daemon's size limit for an EHR message (GET /v1/limits), its default when it does not say."""
    try:
        status, body = target.json("GET", "/v1/limits")
        if status == 200 and isinstance(body, dict):
            return int(body["max_ehr_bytes"])
    except (ApiError, KeyError, TypeError, ValueError):
        pass
    return DEFAULT_MAX_EHR_BYTES


def _read(given: str, stdin_name: str, limit: int) -> tuple[str, bytes]:
    """(the name the receiver sees, the message) of a FILE argument; _Refused naming it otherwise. Never
    reads more than one byte past the limit, whatever the file or pipe holds."""
    if given == STDIN:
        return stdin_name, _bounded(sys.stdin.buffer, stdin_name, limit)
    path = Path(given)
    try:
        with path.open("rb") as handle:
            return path.name, _bounded(handle, path.name, limit)
    except IsADirectoryError:
        raise _Refused(given, "is a directory; send one message a file") from None
    except OSError as exc:
        raise _Refused(given, exc.strerror or str(exc)) from None


def _bounded(handle: BinaryIO, name: str, limit: int) -> bytes:
    what = "an EHR message (FHIR JSON or HL7 v2)"
    try:
        info = os.fstat(handle.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
    except (OSError, ValueError):  # a stdin without a descriptor (a test's, an embedding's)
        size = None
    if size is not None and size > limit:  # said, as the daemon says it, before reading a byte
        raise _Refused(name, f"{size:,} bytes is over the {limit:,}-byte limit for {what}")
    data = handle.read(limit + 1)
    if len(data) > limit:  # a pipe, or a file that grew
        raise _Refused(name, f"more than {limit:,} bytes, the limit for {what}")
    if not data:
        raise _Refused(name, "is empty")
    return data


def _report_failure(
    args: argparse.Namespace, given: str, text: str, *, issues: list[dict[str, Any]] | None = None
) -> None:
    """One line naming the file and its problem; with several problems, one more line for each (where,
    what), so a long Bundle's issues are readable; --json carries them as the daemon gave them."""
    if args.json:
        print(
            json.dumps({"file": given, "state": "failed", "reason": text, "issues": issues or []}), flush=True
        )
    print(f"{_PROG}: {text}", file=sys.stderr, flush=True)
    if issues and len(issues) > 1:
        for issue in issues:
            where = ", ".join(map(str, issue.get("expression") or [])) or "?"
            print(
                f"  {issue.get('severity', 'error')} at {where}: {issue.get('diagnostics')}", file=sys.stderr
            )


def _not_sent(files: list[Any]) -> None:
    if files:
        print(f"{_PROG}: not sent: {', '.join(files)}", file=sys.stderr)
