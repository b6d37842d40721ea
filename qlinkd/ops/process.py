"""What both entry points (`qlinkd`, `qlink-channel`) share as processes: the command line, loading the
configuration or naming its bad field, running until a signal, and pinging systemd's watchdog."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops import logsetup
from qlinkmed.qlinkd.ops.config import Summarised, check_config
from qlinkmed.qlinkd.ops.sdnotify import Notifier

T = TypeVar("T", bound=Summarised)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

STOP_DEADLINE_S = 8.0
"""A signalled process exits within this long (systemd's TimeoutStopSec is 15 s)."""


def parser(prog: str, what: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=what)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", type=Path, metavar="FILE", help="run with this TOML configuration")
    group.add_argument("--check-config", type=Path, metavar="FILE", help="validate FILE and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="json", choices=["json", "text"])
    return p


def _give_up() -> None:
    logging.getLogger("qlink").error("did not stop within %.0f s of the signal; exiting now", STOP_DEADLINE_S)
    logging.shutdown()
    os._exit(EXIT_FAILURE)


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner where it is installed: its TLS transport moves the data plane's bytes about half
    again as fast as asyncio's (bench/bench_dataplane.py), and nothing in the daemon depends on which loop
    runs it. The dependency is for Linux and macOS only; elsewhere the standard library's loop runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_until_signalled(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; a signal ends it cleanly (exit 0)."""

    async def runner() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if task is not None:
                task.cancel()
            # A stop that does not finish in time is a bug; it must not keep the service alive.
            loop.call_later(STOP_DEADLINE_S, _give_up)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await main()

    try:
        _event_loop_runner()(runner())
    except asyncio.CancelledError:
        return EXIT_OK
    return EXIT_OK


async def watchdog(notifier: Notifier, interval: float) -> None:
    """Ping systemd's watchdog while the event loop is responsive."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def load_or_report(load: Callable[[Path], T], path: Path) -> T | None:
    """The configuration at `path`, or None after printing the one line that names the bad field."""
    try:
        return load(path)
    except ConfigError as exc:
        print(f"config error: {exc.field}: {exc.message}", file=sys.stderr)
        return None


def run_process(
    prog: str,
    what: str,
    load: Callable[[Path], T],
    serve: Callable[[T], Coroutine[Any, Any, None]],
    argv: list[str] | None,
) -> int:
    """The whole life of an entry point: parse `argv`; with --check-config validate and exit; otherwise
    load the configuration (exit 2 naming the bad field), set up logging and run `serve` until a signal."""
    args = parser(prog, what).parse_args(argv)
    if args.check_config is not None:
        return check_config(args.check_config, load)
    config = load_or_report(load, args.config)
    if config is None:
        return EXIT_USAGE
    logsetup.configure(args.log_level, args.log_format)
    return run_until_signalled(lambda: serve(config))
