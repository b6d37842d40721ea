"""`qlinkd`: the facility daemon.

qlinkd --config FILE          run (systemd: Type=notify)
qlinkd --check-config FILE    validate FILE, print a summary or the offending field, exit 0 or 2
"""

from __future__ import annotations

import sys

from qlinkmed.qlinkd.daemon import run_daemon
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.process import run_process


def main(argv: list[str] | None = None) -> int:
    return run_process("qlinkd", "qlink facility daemon", load_facility_config, run_daemon, argv)


if __name__ == "__main__":
    sys.exit(main())
