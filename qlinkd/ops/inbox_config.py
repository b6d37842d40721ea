"""The `[inbox]` table of a facility's configuration: the hospital's retention policy for what peers
deliver (`dataplane.retention` applies it). Every key is optional and off when absent: without them the
inbox keeps everything until an operator removes it.

    [inbox]
    purge_after_fetch_s = 86400       # a day after `qlink inbox fetch` took it
    purge_after_forward_s = 3600      # an hour after every gateway destination accepted it
    max_age_s = 2592000               # 30 days after it arrived, fetched or not
    sweep_interval_s = 60             # how often the policy is applied
    dir = "/srv/qlink-inbox"          # the inbox elsewhere than state_dir/inbox (e.g. shared storage)

A purge removes the at-rest copy (its files, and an EHR message's key in the key store) and keeps the
transfer's record, so a re-sent transfer is still answered "already delivered". `max_age_s` purges what nobody
fetched or forwarded too: that is the policy the hospital sets, and it should be longer than any
forward may take to succeed.

`dir` places the inbox directory (delivered files and EHR messages at rest) elsewhere, e.g. on shared
storage: nothing in it opens without the keys in the daemon's key store (state_dir/keys.sqlite3). It is
created 0700 when it does not exist; an existing directory keeps the mode its operator gave it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.ops.toml_reader import Table, build, check

MAX_RETENTION_S = 100 * 365 * 86400.0
"""Longest period a key takes (a century: anything longer is a typo)."""
DEFAULT_SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxConfig:
    """Retention of delivered transfers ([inbox]); every period None: that rule is off."""

    purge_after_fetch_s: float | None = None
    """Purge this long after the transfer was fetched whole, its last file read (0: at the next sweep)."""
    purge_after_forward_s: float | None = None
    """Purge this long after every gateway destination owed the transfer accepted it. A transfer with a
    forward still pending or parked is never purged by this rule (nor by purge_after_fetch_s)."""
    max_age_s: float | None = None
    """Purge this long after delivery, whatever else holds: fetched or not, forwarded or not."""
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    """How often the policy is applied, in [0.1, 3600] seconds."""
    dir: Path | None = None
    """Where the inbox directory is (absolute; relative paths in the file are read from its folder);
    None: state_dir/inbox."""

    def __post_init__(self) -> None:
        for name in ("purge_after_fetch_s", "purge_after_forward_s", "max_age_s"):
            value = getattr(self, name)
            if value is not None:
                check(
                    math.isfinite(value) and 0 <= value <= MAX_RETENTION_S,
                    name,
                    f"must be a number of seconds in [0, {MAX_RETENTION_S:.0f}]",
                )
        check(
            math.isfinite(self.sweep_interval_s) and 0.1 <= self.sweep_interval_s <= 3600,
            "sweep_interval_s",
            "must be in [0.1, 3600] seconds",
        )
        check(self.dir is None or self.dir.is_absolute(), "dir", "must be an absolute path")

    @property
    def enabled(self) -> bool:
        """Whether any rule is on (the daemon runs no retention task otherwise)."""
        return any(
            v is not None for v in (self.purge_after_fetch_s, self.purge_after_forward_s, self.max_age_s)
        )


def inbox_section(root: Table) -> InboxConfig:
    """Parse `[inbox]` (absent: retention off)."""
    table = root.table("inbox", optional=True)
    periods = {
        key: table.number(key) if table.has(key) else None
        for key in ("purge_after_fetch_s", "purge_after_forward_s", "max_age_s")
    }
    config = build(
        "inbox",
        InboxConfig,
        **periods,
        sweep_interval_s=table.number("sweep_interval_s", DEFAULT_SWEEP_INTERVAL_S),
        dir=table.path("dir") if table.has("dir") else None,
    )
    table.finish()
    return config
