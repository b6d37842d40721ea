"""`qlink-channel`: the quantum-channel service.

qlink-channel --config FILE          run (systemd: Type=notify)
qlink-channel --check-config FILE    validate FILE and exit 0 or 2
"""

from __future__ import annotations

import asyncio
import sys

from . import logsetup
from .config import check_config, load_channel_config
from .main import EXIT_USAGE, load_or_report, parser, run_until_signalled, watchdog
from .sdnotify import Notifier


def main(argv: list[str] | None = None) -> int:
    args = parser("qlink-channel", "qlink quantum-channel service").parse_args(argv)
    if args.check_config is not None:
        return check_config(args.check_config, "channel")
    config = load_or_report(load_channel_config, args.config)
    if config is None:
        return EXIT_USAGE
    logsetup.configure(args.log_level, args.log_format)
    from .channel_service import serve

    notifier = Notifier()

    async def run() -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                interval = notifier.watchdog_interval()
                if interval:
                    tg.create_task(watchdog(notifier, interval))
                tg.create_task(serve(config, on_ready=lambda ports: notifier.ready()))
        finally:
            notifier.stopping()

    return run_until_signalled(run)


if __name__ == "__main__":
    sys.exit(main())
