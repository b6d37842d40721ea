"""`qlink ca init`: a demo certificate authority and the mutual-TLS certificates of a qlink deployment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

EXIT_OK, EXIT_USAGE = 0, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming the argument, not the whole usage block.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    init = sub.add_parser(
        "init",
        help="create a CA and certificates for facilities, the channel service and SAEs",
        description="Write ca.pem/ca.key and NAME.pem/NAME.key for each facility, the channel service "
        "('channel') and each SAE into DIR. Private keys are mode 0600. Existing files are never replaced.",
    )
    init.add_argument("--dir", required=True, type=Path, help="output directory (created if missing)")
    init.add_argument(
        "--facility", action="append", required=True, default=[], help="facility id (repeat for each)"
    )
    init.add_argument(
        "--sae", action="append", default=[], help="SAE id: a client-only certificate (repeatable)"
    )
    init.add_argument(
        "--host",
        action="append",
        default=[],
        help="server name or IP for facility/channel certificates (repeatable; "
        "default 127.0.0.1 and localhost)",
    )
    init.set_defaults(run=run_init)


def run_init(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.errors import PkiError
    from qlinkmed.qlinkd.ops.pki import write_demo_pki

    hosts = tuple(args.host) or ("127.0.0.1", "localhost")
    try:
        written = write_demo_pki(args.dir, args.facility, args.sae, hosts=hosts)
    except (PkiError, ValueError) as exc:
        print(f"qlink ca init: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in written.values():
        print(path)
    return EXIT_OK


def run(argv: list[str]) -> int:
    """Entry point for `qlink ca ARGS` without the top-level dispatcher."""
    parser = _Parser(prog="qlink ca", description="demo certificate authority for mutual TLS")
    register(parser)
    args = parser.parse_args(argv)
    return int(args.run(args))
