"""The inbox listing's filters, parsed from text once for the CLI (`qlink inbox list --since 3d`) and the
data API (GET /v1/inbox?since=3d) alike; `records.TransferRecords.list_inbox` turns them into SQL.

Times (`since`, `until`) are when a transfer began to arrive: an ISO date (2026-03-01, local midnight),
an ISO date and time (2026-03-01T08:30, 2026-03-01 08:30:00, local unless it carries an offset or Z), or
a span back from now: a number and one of s, m, h, d, w (90m, 2h, 3d, 1w). A bad value raises
FilterError naming the option, which the CLI reports with exit 2 and the API as a 400 naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from qlinkmed.qlinkd.errors import FilterError

MAX_LIMIT = 100_000
DEFAULT_LIMIT = 1000
KINDS = ("study", "images", "ehr")
_SPAN = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_MODALITY = re.compile(r"[A-Za-z0-9_]{1,16}")
_ID_PREFIX = re.compile(r"[0-9a-fA-F-]{1,36}")
MAX_TEXT = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxFilter:
    """Which transfers the inbox listing returns, newest first. None: no restriction."""

    patient: str | None = None
    """Part of the patient's name or ID, any case."""
    accession: str | None = None
    """The accession number, exactly."""
    modality: str | None = None
    """One of the study's modalities (CT, MR...), any case."""
    kind: str | None = None
    """study, images or ehr."""
    peer: str | None = None
    """The sending facility."""
    department: str | None = None
    """The department recorded on arrival, exactly but in any case."""
    since: float | None = None
    """Began arriving at or after (Unix time)."""
    until: float | None = None
    """Began arriving before (Unix time)."""
    unfetched: bool = False
    """Only delivered transfers never fetched (and not purged)."""
    id_prefix: str | None = None
    """Transfer IDs starting with this (what `qlink inbox fetch` resolves a short ID with)."""
    limit: int = DEFAULT_LIMIT
    """At most this many, 1..MAX_LIMIT."""


def parse_time(option: str, text: str, now: float) -> float:
    """Unix time of an ISO date, ISO date-time or a span back from `now` ("2h", "3d")."""
    value = text.strip()
    span = _SPAN.fullmatch(value.lower())
    if span:
        seconds = float(span.group(1)) * _UNIT_S[span.group(2)]
        if not math.isfinite(seconds):
            raise FilterError(option, f"{text!r} is too long a span")
        return now - seconds
    try:
        when = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise FilterError(
            option,
            f"{text!r} is neither an ISO date or date-time (2026-03-01, 2026-03-01T08:30) nor a span "
            "back from now (90m, 2h, 3d, 1w)",
        ) from None
    try:
        return when.timestamp()  # naive: local time, as the listing shows it
    except (OverflowError, OSError, ValueError):
        raise FilterError(option, f"{text!r} is out of range") from None


def _text(option: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise FilterError(option, "must not be empty")
    if len(value) > MAX_TEXT or not value.isprintable():
        raise FilterError(option, f"must be printable text of at most {MAX_TEXT} characters")
    return value


def parse_filter(values: Mapping[str, str | None], now: float) -> InboxFilter:
    """An InboxFilter from text values (query parameters, or CLI options as given); missing or None
    values do not filter. `unfetched` is on for "1", "true" or "yes"."""
    modality = _text("modality", values.get("modality"))
    if modality is not None and not _MODALITY.fullmatch(modality):
        raise FilterError("modality", f"{modality!r} is not a DICOM modality code (CT, MR, US...)")
    kind = values.get("kind")
    if kind is not None and kind not in KINDS:
        raise FilterError("kind", f"must be one of {' | '.join(KINDS)}, got {kind!r}")
    id_prefix = values.get("id")
    if id_prefix is not None and not _ID_PREFIX.fullmatch(id_prefix):
        raise FilterError("id", "must be the start of a transfer ID (hex digits and '-')")
    since = values.get("since")
    until = values.get("until")
    start = None if since is None else parse_time("since", since, now)
    end = None if until is None else parse_time("until", until, now)
    if start is not None and end is not None and end <= start:
        raise FilterError("until", "must be later than since")
    unfetched = (values.get("unfetched") or "").lower()
    if unfetched not in ("", "0", "1", "true", "false", "yes", "no"):
        raise FilterError("unfetched", "must be true or false")
    limit_text = values.get("limit")
    try:
        limit = DEFAULT_LIMIT if limit_text is None else int(limit_text)
    except ValueError:
        raise FilterError("limit", f"{limit_text!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError("limit", f"must be in 1..{MAX_LIMIT}")
    return InboxFilter(
        patient=_text("patient", values.get("patient")),
        accession=_text("accession", values.get("accession")),
        modality=None if modality is None else modality.upper(),
        kind=kind,
        peer=_text("peer", values.get("peer")),
        department=_text("department", values.get("department")),
        since=start,
        until=end,
        unfetched=unfetched in ("1", "true", "yes"),
        id_prefix=None if id_prefix is None else id_prefix.lower(),
        limit=limit,
    )
