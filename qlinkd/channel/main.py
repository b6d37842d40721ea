"""`qlink-channel`: the quantum-channel service.

qlink-channel --config FILE          run (systemd: Type=notify)
qlink-channel --check-config FILE    validate FILE and exit 0 or 2
"""

from __future__ import annotations

import asyncio
import sys

from qlinkmed.qlinkd.channel.config import ChannelServiceConfig, load_channel_config
from qlinkmed.qlinkd.channel.service import serve
from qlinkmed.qlinkd.ops.process import run_process, watchdog
from qlinkmed.qlinkd.ops.sdnotify import Notifier


async def run_channel(config: ChannelServiceConfig) -> None:
    """Serve until cancelled, telling systemd when ready and pinging its watchdog."""
    notifier = Notifier()
    try:
        async with asyncio.TaskGroup() as tg:
            interval = notifier.watchdog_interval()
            if interval:
                tg.create_task(watchdog(notifier, interval))
            tg.create_task(serve(config, on_ready=lambda ports: notifier.ready()))
    finally:
        notifier.stopping()


def main(argv: list[str] | None = None) -> int:
    return run_process(
        "qlink-channel", "qlink quantum-channel service", load_channel_config, run_channel, argv
    )


if __name__ == "__main__":
    sys.exit(main())
