"""`qlink`: a dispatch table of subcommands, one module each. Heavy imports (numpy, qiskit) happen inside
the subcommand that needs them, so `qlink --help` stays fast. With no arguments `qlink` shows the status of
the daemon named by $QLINK_CONFIG, or this help when it is not set."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import NoReturn

# subcommand -> (module under qlinkmed.client.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("status", "health of a facility daemon's QKD links"),
    "keys": ("keys", "key pool levels of a facility daemon (never the keys)"),
    "alarm": ("alarm", "acknowledge a facility's latched alarms (they stay raised until then)"),
    "audit": ("audit", "verify a facility's audit log: its hash chain and the heads its peers anchored"),
    "eve": ("eve", "attach or detach an eavesdropper on the channel service (test mode)"),
    "testbed": ("testbed", "write or run a two-facility deployment on loopback"),
    "ca": ("ca", "demo certificate authority and mutual-TLS certificates"),
    "sim": ("sim", "simulate a BB84 or E91 link, or sweep distance and eavesdropping"),
    "image": ("image", "encrypt, decrypt or assess images with the seed paper's quantum image cipher"),
    "send": ("send", "send DICOM studies or PNG/JPEG images to a peer facility"),
    "ehr": ("ehr", "send a FHIR JSON or HL7 v2 message to a peer facility"),
    "inbox": ("inbox", "list and fetch what peer facilities delivered"),
    "demo": ("demo", "run two facilities on loopback and send a study and EHR messages (--eve: attacked)"),
}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming the argument, not the whole usage block.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qlink", description="qlink: quantum-secured telemedicine link")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        import_module(f"qlinkmed.client.commands.{module}").register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if os.environ.get("QLINK_CONFIG"):
            return main(["status"])
        parser.print_help()
        return EXIT_OK
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
