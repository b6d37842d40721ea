"""`qlink eve attach|detach|status`: put an eavesdropper on the emulated fibre, or take it off, through the
channel service's admin API (the eavesdropper-injection test mode). Attaching and detaching carry the
admin token the service wrote to its state_dir (found through --channel-config, or --token-file)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..daemon_http import ApiError, TargetError, base_url, call, channel_config, unreachable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
KINDS = ("intercept-resend", "pns")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _target_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--channel-config", type=Path, metavar="FILE", help="channel service configuration")
    group.add_argument(
        "--admin", metavar="URL", help="admin API of the channel service, http://127.0.0.1:PORT"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="admin API token (default: the channel config's state_dir/admin-api.token)",
    )
    parser.add_argument("--json", action="store_true", help="print the channel service's JSON unchanged")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    attach = sub.add_parser("attach", help="attack the pulses of every link from now on")
    _target_flags(attach)
    attach.add_argument(
        "--kind", choices=KINDS, default="intercept-resend", help="the attack (intercept-resend)"
    )
    attach.add_argument(
        "--fraction", type=_fraction, default=1.0, help="share of the pulses attacked, in [0, 1] (1)"
    )
    attach.set_defaults(run=run, method="POST")
    detach = sub.add_parser("detach", help="remove the eavesdropper")
    _target_flags(detach)
    detach.set_defaults(run=run, method="DELETE")
    status = sub.add_parser("status", help="show the eavesdropper and the links the channel carries")
    _target_flags(status)
    status.set_defaults(run=run, method="GET")


def run(args: argparse.Namespace) -> int:
    prog = f"qlink eve {args.action}"
    try:
        url, token = _target(args)
    except TargetError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    path = "/v1/status" if args.method == "GET" else "/v1/eve"
    body = {"kind": args.kind, "fraction": args.fraction} if args.method == "POST" else None
    try:
        text, state = call(url + path, method=args.method, body=body, token=token)
    except ApiError as exc:
        if exc.status == 400:
            # The service judged our arguments: a usage error, said in its own words.
            print(f"{prog}: error: {exc.reason}", file=sys.stderr)
            return EXIT_USAGE
        print(unreachable("the channel service", exc), file=sys.stderr)
        return EXIT_FAILURE
    print(text.rstrip("\n") if args.json else format_channel(state))
    return EXIT_OK


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The admin API's URL, and the token when the call changes something. Raises TargetError."""
    token_file: Path | None = args.token_file
    if args.admin is not None:
        url = base_url(args.admin)
    else:
        config = channel_config(args.channel_config)
        url = f"http://{config.admin}"
        token_file = token_file or config.admin_token_path
    if args.method == "GET":
        return url, None  # reading the status needs no token
    if token_file is None:
        raise TargetError("--admin needs --token-file (or use --channel-config)")
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise TargetError(
            f"cannot read the channel admin token {token_file}: {exc.strerror or exc} "
            "(the channel service writes it at start; run as its user, or pass --token-file)"
        ) from None
    return url, token


def format_channel(state: dict[str, Any]) -> str:
    """The human view of the admin API's status object."""
    eve = state.get("eve", {})
    kind = eve.get("kind", "none")
    attack = "none" if kind == "none" else f"{kind} on {eve.get('fraction', 0.0):.0%} of the pulses"
    fiber = state.get("fiber", {})
    links = ", ".join(state.get("links", [])) or "none connected"
    # The pulses each link sends decide what an attack can do (PNS needs multi-photon pulses).
    sources = ", ".join(f"{link} {kind}" for link, kind in state.get("sources", {}).items()) or "-"
    rows = [
        ("eavesdropper", attack),
        ("links", links),
        ("sources", sources),
        ("rounds carried", f"{state.get('rounds', 0):,}"),
        (
            "fibre",
            f"{fiber.get('distance_km', 0):g} km, misalignment {fiber.get('misalignment', 0):g}, "
            f"detector efficiency {fiber.get('detector_efficiency', 0):g}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
