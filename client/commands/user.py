"""`qlink user add|list|disable|rotate|assign|break-glass`: the people who read patient data at a facility.

Managing users is an administrator's act: it takes the facility token (as `qlink alarm ack` does) and is
audited with the OS user who ran it. A user's token is printed once, by `add` and `rotate` (or written
0600 to --token-file FILE); the daemon keeps only its hash. `break-glass` is the user's own act, with
the user's token (--user-token-file FILE or $QLINK_USER_TOKEN): access beyond the user's roles for a
while, with a stated reason, audited and shown as an alarm in `qlink status` until it expires."""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from ..daemon_http import (
    CONFIG_ENV,
    ApiError,
    TargetError,
    add_local_target,
    base_url,
    local_endpoint,
    unreachable,
)
from ..data_http import DataTarget, add_data_target, data_target, error_message

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
USER_TOKEN_ENV = "QLINK_USER_TOKEN"


def add_user_token(parser: argparse.ArgumentParser) -> None:
    """--config FILE | --url URL for the daemon, and the user's token for reading patient data."""
    add_local_target(parser)
    parser.add_argument(
        "--user-token-file",
        type=Path,
        metavar="FILE",
        help=f"the user's token (from qlink user add; default: ${USER_TOKEN_ENV})",
    )


def user_target(args: argparse.Namespace) -> DataTarget:
    """The daemon named by --config/--url/$QLINK_CONFIG with the user's token. Raises TargetError."""
    if args.url is not None:
        url = base_url(args.url)
    else:
        path = args.config or os.environ.get(CONFIG_ENV)
        if not path:
            raise TargetError(f"say which daemon: --config FILE, --url URL or ${CONFIG_ENV}")
        url = local_endpoint(Path(path)).url
    if args.user_token_file is not None:
        try:
            token = args.user_token_file.read_text().strip()
        except OSError as exc:
            raise TargetError(
                f"cannot read the user token {args.user_token_file}: {exc.strerror or exc}"
            ) from None
    else:
        token = os.environ.get(USER_TOKEN_ENV, "").strip()
        if not token:
            raise TargetError(
                f"reading patient data needs a user token: --user-token-file FILE or ${USER_TOKEN_ENV}"
                " (qlink user add NAME --role ROLE makes one)"
            )
    return DataTarget(url, token)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user with one or more roles; prints the user's token once")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--role", action="append", required=True, metavar="ROLE", help="a role of [[access.role]]"
    )
    add.add_argument(
        "--department",
        action="append",
        default=[],
        metavar="NAME",
        help="a department the user works for (what the intent gate judges requests against); repeatable",
    )
    add.add_argument(
        "--user-token-out", type=Path, metavar="FILE", help="write the token here (0600) instead"
    )
    add.set_defaults(run=run_add)
    listing = sub.add_parser("list", help="the facility's users (never their tokens)")
    listing.set_defaults(run=run_list)
    disable = sub.add_parser("disable", help="refuse a user's token from now on")
    disable.add_argument("user", metavar="ID")
    disable.set_defaults(run=run_disable)
    rotate = sub.add_parser("rotate", help="issue a user a new token; the old one stops working")
    rotate.add_argument("user", metavar="ID")
    rotate.add_argument(
        "--user-token-out", type=Path, metavar="FILE", help="write the token here (0600) instead"
    )
    rotate.set_defaults(run=run_rotate)
    assign = sub.add_parser(
        "assign",
        help='assign a patient (roles with patients = "assigned") or a department (the gate) to a user',
    )
    assign.add_argument("user", metavar="ID")
    what = assign.add_mutually_exclusive_group(required=True)
    what.add_argument("--patient", metavar="PID")
    what.add_argument("--department", metavar="NAME")
    assign.add_argument("--unassign", action="store_true", help="remove the assignment instead")
    assign.set_defaults(run=run_assign)
    for command in (add, listing, disable, rotate, assign):
        add_data_target(command)
        command.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    glass = sub.add_parser("break-glass", help="emergency access beyond your roles, for a while (audited)")
    glass.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the audit log)")
    glass.add_argument("--minutes", type=float, metavar="N", help="how long (default: the facility's, 60)")
    add_user_token(glass)
    glass.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    glass.set_defaults(run=run_break_glass)


def _operator() -> str:
    # The name the operator logged in with; the token proves the right to manage users, this says who.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _call(
    args: argparse.Namespace,
    command: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    user: bool = False,
) -> tuple[int, Any]:
    """(exit code, the daemon's JSON answer or None): errors are printed here."""
    try:
        target = user_target(args) if user else data_target(args)
    except TargetError as exc:
        print(f"qlink user {command}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE, None
    try:
        payload = None if body is None else json.dumps(body).encode()
        status, answer = target.json(method, path, body=payload)
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE, None
    finally:
        target.close()
    if status not in (200, 201):
        print(f"qlink user {command}: error: {error_message(status, answer)}", file=sys.stderr)
        return (EXIT_USAGE if status in (400, 404) else EXIT_FAILURE), None
    return EXIT_OK, answer


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def format_user(user: dict[str, Any]) -> str:
    glass = ""
    if user.get("break_glass_until"):
        glass = f"  BREAK-GLASS until {_when(user['break_glass_until'])}: {user.get('break_glass_reason')}"
    return (
        f"{user['id']}  {user['name']:<16} {user['state']:<8} roles {', '.join(user['roles']) or '-'}"
        f"  departments {', '.join(user.get('departments') or []) or '-'}"
        f"  patients {user['patients']}  token issued {_when(user['rotated_at'])}{glass}"
    )


def _path(user: str, action: str) -> str:
    # Percent-encoded whole ("." too), so any text reaches the route and gets the daemon's own 404.
    return f"/v1/users/{urllib.parse.quote(user, safe='').replace('.', '%2E')}/{action}"


def _write_token(path: Path, token: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")


def _issued(args: argparse.Namespace, command: str, answer: dict[str, Any]) -> int:
    token, user = answer["token"], answer["user"]
    if args.user_token_out is not None:
        try:
            _write_token(args.user_token_out, token)
        except OSError as exc:
            # The token is lost with this answer; the user can be rotated for another.
            print(
                f"qlink user {command}: error: cannot write {args.user_token_out}: {exc.strerror or exc};"
                f" issue another with qlink user rotate {user['id']}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        shown = {"user": user, "token_file": str(args.user_token_out)}
        print(
            json.dumps(shown) if args.json else f"{format_user(user)}\ntoken written to {args.user_token_out}"
        )
    else:
        print(json.dumps(answer) if args.json else f"{format_user(user)}\ntoken (shown once): {token}")
    return EXIT_OK


def run_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "roles": args.role, "departments": args.department, "who": _operator()}
    code, answer = _call(args, "add", "POST", "/v1/users", body)
    return code if answer is None else _issued(args, "add", answer)


def run_rotate(args: argparse.Namespace) -> int:
    code, answer = _call(args, "rotate", "POST", _path(args.user, "rotate"), {"who": _operator()})
    return code if answer is None else _issued(args, "rotate", answer)


def run_list(args: argparse.Namespace) -> int:
    code, answer = _call(args, "list", "GET", "/v1/users", None)
    if answer is not None:
        users = answer["users"]
        print(json.dumps(answer) if args.json else "\n".join(format_user(u) for u in users) or "no users")
    return code


def run_disable(args: argparse.Namespace) -> int:
    code, answer = _call(args, "disable", "POST", _path(args.user, "disable"), {"who": _operator()})
    if answer is not None:
        print(json.dumps(answer) if args.json else format_user(answer["user"]))
    return code


def run_assign(args: argparse.Namespace) -> int:
    if args.patient is not None:
        body = {"patient": args.patient, "assigned": not args.unassign, "who": _operator()}
        code, answer = _call(args, "assign", "POST", _path(args.user, "patients"), body)
    else:
        body = {"department": args.department, "assigned": not args.unassign, "who": _operator()}
        code, answer = _call(args, "assign", "POST", _path(args.user, "departments"), body)
    if answer is not None:
        print(json.dumps(answer) if args.json else format_user(answer["user"]))
    return code


def run_break_glass(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, "minutes": args.minutes}
    code, answer = _call(args, "break-glass", "POST", "/v1/break-glass", body, user=True)
    if answer is not None:
        user = answer["user"]
        print(
            json.dumps(answer)
            if args.json
            else f"break-glass for {user['name']} until {_when(user['break_glass_until'])}:"
            " every read is audited"
        )
    return code
