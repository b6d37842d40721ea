"""`qlink`: a dispatch table of subcommands, one module each. Heavy imports (numpy, qiskit, pydicom,
fhir.resources) happen inside the subcommand that needs them, so `qlink --help` and the light commands
(status, keys, ehr send, inbox list) stay fast. With no arguments `qlink` shows the status of the daemon
named by $QLINK_CONFIG, or this help when it is not set.

Exit codes, the same for every command: 0 done; 1 the operation failed (a file refused, a daemon
unreachable or refusing); 2 usage or input error (bad arguments, unknown peer, an output that exists
without --force); 3 no key (`sim`: the round aborted) or, for `audit verify`, an anchor mismatch; 4 not
finished yet (`send`, `ehr send`: queued, not delivered within --wait) or, for `audit verify`, anchors
not checked; 141 (128 + SIGPIPE, as the shell's own tools) when stdout was closed before the command
finished, e.g. `qlink inbox list | head -1`."""

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
    "user": ("user", "the users who read patient data: add, list, disable, rotate, assign; break-glass"),
    "forward": ("forward", "what the gateways owe the PACS / engine / FHIR server; release parked forwards"),
    "gate": ("gate", "train and judge the request-intention gate's QFNN and baselines on synthetic logs"),
    "demo": ("demo", "run two facilities on loopback and send a study and EHR messages (--eve: attacked)"),
}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_PENDING = 4
EXIT_BROKEN_PIPE = 128 + 13
"""What a shell reports for a tool killed by SIGPIPE (Python ignores the signal and raises instead)."""


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print qlink's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("qlinkmed")
        except PackageNotFoundError:  # run from a source tree that was never installed
            text = "unknown (the qlinkmed package is not installed)"
        print(f"qlink {text}")
        parser.exit(EXIT_OK)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming the argument, not the whole usage block.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qlink", description="qlink: quantum-secured telemedicine link")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        import_module(f"qlinkmed.client.commands.{module}").register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            code = _dispatch(argv)
        finally:
            # Flushed here, not at exit (also after argparse's SystemExit for --help): a closed pipe
            # must raise inside this try, not in the interpreter's shutdown ("Exception ignored", 120).
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at /dev/null first, so the flush at
        # exit has nowhere to fail (the recipe in Python's signal module documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if os.environ.get("QLINK_CONFIG"):
            return _dispatch(["status"])
        parser.print_help()
        return EXIT_OK
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
