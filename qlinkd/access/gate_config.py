"""`[gate]`: the request-intention gate (seed paper 003) that scores every inbox fetch before it is served.

    [gate]
    mode = "monitor"              # "off" | "monitor" (score and audit only; the default) | "enforce"
    model = "/etc/qlink/qfnn-request.json"   # default: the model shipped with qlinkd
    step_up_at = 0.5              # P(malicious) from which the user must hold break-glass (default: the
                                  # model's own operating threshold, 1 % false positives in training)
    deny_at = 0.9                 # P(malicious) from which the fetch is refused whatever the grant
    window_days = 30              # the history RF and the usual counts are read from
    work_hours = [7, 19]          # local hours counted as working time; the rest is night
    timezone = "Europe/Berlin"    # the facility's zone, for working hours and day boundaries (default UTC)
    test_clock = false            # testbeds only: POST /v1/gate/clock moves the gate's clock (audited)

Errors name the field (`gate.deny_at`)."""

from __future__ import annotations

import enum
import math
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from qlinkmed.qlinkd.ops.toml_reader import Table, build, check

DEFAULT_DENY_AT = 0.9
DEFAULT_WINDOW_DAYS = 30
DEFAULT_WORK_HOURS = (7.0, 19.0)
MAX_WINDOW_DAYS = 366


class GateMode(enum.StrEnum):
    OFF = "off"
    """No scoring at all."""
    MONITOR = "monitor"
    """Every first fetch of a transfer is scored and audited; nothing is refused for it."""
    ENFORCE = "enforce"
    """Scored, audited, and a step-up or deny decision refuses the fetch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GateConfig:
    mode: GateMode = GateMode.MONITOR
    """Whether the gate scores, and whether its decisions are applied."""
    model: Path | None = None
    """The QFNN model file (`qlink gate evaluate` writes one); None: the one shipped with qlinkd."""
    step_up_at: float | None = None
    """Probability from which a fetch needs an active break-glass grant; None: the model's threshold."""
    deny_at: float = DEFAULT_DENY_AT
    """Probability from which a fetch is refused, break-glass or not."""
    window_days: int = DEFAULT_WINDOW_DAYS
    """Days of history before today that RF and the user's usual counts are computed over."""
    work_hours: tuple[float, float] = DEFAULT_WORK_HOURS
    """[start, end) local hours of working time; requests outside are night requests."""
    timezone: str = "UTC"
    """IANA zone of the facility: where its days begin and its working hours lie."""
    test_clock: bool = False
    """Let the facility token set the gate's (and break-glass's) clock: for scripted testbed scenarios
    that replay weeks of history in minutes. Never on a production daemon: it is audited at start."""

    def __post_init__(self) -> None:
        if self.step_up_at is not None:
            check(0.0 < self.step_up_at < 1.0, "step_up_at", "must lie strictly between 0 and 1")
        check(0.0 < self.deny_at <= 1.0, "deny_at", "must lie in (0, 1]")
        if self.step_up_at is not None:
            check(self.step_up_at <= self.deny_at, "deny_at", "must be at least step_up_at")
        check(
            1 <= self.window_days <= MAX_WINDOW_DAYS,
            "window_days",
            f"must be a whole number of days in 1..{MAX_WINDOW_DAYS}",
        )
        start, end = self.work_hours
        check(
            math.isfinite(start) and math.isfinite(end) and 0 <= start < end <= 24,
            "work_hours",
            "must be [start, end] hours with 0 <= start < end <= 24",
        )
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            check(False, "timezone", f"{self.timezone[:60]!r} is not an IANA time zone (Europe/Berlin, UTC)")

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def gate_section(root: Table) -> GateConfig:
    """Parse `[gate]` (absent: monitor mode with the shipped model)."""
    table = root.table("gate", optional=True)
    mode = table.choice("mode", GateMode, tuple(m.value for m in GateMode), GateMode.MONITOR.value)
    hours = table.number_list("work_hours") if table.has("work_hours") else DEFAULT_WORK_HOURS
    check(len(hours) == 2, table.name("work_hours"), "must be two numbers: [start, end]")
    config = build(
        "gate",
        GateConfig,
        mode=mode,
        model=table.file("model") if table.has("model") else None,
        step_up_at=table.number("step_up_at") if table.has("step_up_at") else None,
        deny_at=table.number("deny_at", DEFAULT_DENY_AT),
        window_days=table.integer("window_days", DEFAULT_WINDOW_DAYS),
        work_hours=(hours[0], hours[1]),
        timezone=table.text("timezone", "UTC"),
        test_clock=table.boolean("test_clock", False),
    )
    table.finish()
    return config
