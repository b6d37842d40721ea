"""A seeded generator of synthetic insider-threat logs with the CMU CERT r4.2 schema, plus qlink's own
request log for each user.

r4.2 itself (1,000 users of a fictional company over 17 months, 70 insiders) cannot be installed here,
so this module writes logs with its tables and columns:

- logon  (id, date, user, pc, activity: Logon | Logoff)
- device (id, date, user, pc, activity: Connect | Disconnect)
- file   (id, date, user, pc, filename, content): in r4.2, files copied to removable media
- email  (id, date, user, pc, to, cc, bcc, from, size, attachments, content)
- http   (id, date, user, pc, url, content)
- LDAP   (employee_name, user_id, email, role, business_unit, functional_unit, department, team,
  supervisor), in `Directory.ldap`
- requests, qlink's own (id, date, user, action: list | fetch, department, modality, message_type,
  volume in bytes): what each user asked a facility's inbox for.

Deviations from r4.2, on purpose: `id` is the row number, not a random string; `date` is a numpy
datetime64[s] column, not an "MM/DD/YYYY HH:MM:SS" string (`cert_date_strings` gives that form);
`content` holds a few category words, not a bag of words; the company is a hospital (clinical
departments whose studies and messages are the requested data); the period is `days` calendar days
(120 by default), not 17 months; there is no psychometric table.

Habits: every user has a shift (day, or night for 8 % of clinical staff), a start hour and a day length,
rates of logons, web visits, email (with a share of external recipients), qlink requests (with a small
share outside the departments they are authorised for: consults), and 20 % of users (50 % in IT) use
removable drives. Some users are hired during the period (new: AU = 1) and some leave for ordinary
reasons, so leaving is not a label. Benign noise overlaps every insider signal: night shifts log on after
hours, USB users copy files, everyone visits a job site now and then, IT staff read security sites.

The insiders (r4.2's three scenarios, in r4.2's proportions 30:30:10 of 70 per 1,000 users):

1. A user who never used removable drives starts logging on after hours, using a thumb drive and
   uploading to a wikileaks-like site, for a few days, then leaves. qlink: bulk fetches of other
   departments' studies at night on the same days.
2. A user browses job sites and writes to competitors (external email) for 2-4 weeks, then copies data to
   a thumb drive at a markedly higher rate than before and leaves. qlink: bulk fetches of their own and
   other departments' studies in the evenings of the theft days.
3. A disgruntled system administrator downloads a keylogger, uses a thumb drive to plant it on the
   supervisor's machine, the next day logs on as the supervisor after hours and sends an alarming mass
   email, then leaves. qlink: the administrator, authorised for no clinical data, bulk-fetches studies at
   night. Only scenario 3 needs an IT administrator; with none available it becomes scenario 1.

Labels are per user-day (`SyntheticLogs.malicious`): a day is malicious when it holds an injected event,
including the supervisor's hijacked day in scenario 3 (the account, not its owner, acted maliciously).
With the defaults about 0.5 % of active user-days are malicious (r4.2: well under 1 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import cert_records as rec
from .cert_schema import (
    CLINICAL,
    COMPANY_DOMAIN,
    COMPETITORS,
    DAY_S,
    DEPARTMENTS,
    HACK_SITES,
    HOUR_S,
    JOB_SITES,
    LEAK_SITES,
    NORMAL_SITES,
    SCHEMA,
    Directory,
)

_DEPT_SHARE = np.array([0.16, 0.14, 0.13, 0.17, 0.10, 0.10, 0.12, 0.08])
_CLINICAL_ROLES = ("Physician", "Nurse", "Technologist", "Clerk")
_FIRST = ("Alex", "Sam", "Jordan", "Casey", "Morgan", "Riley", "Taylor", "Jamie", "Avery", "Quinn")
_LAST = ("Reyes", "Okafor", "Novak", "Lindqvist", "Haddad", "Tanaka", "Moreau", "Kowalski", "Ibsen", "Silva")


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthConfig:
    """What to generate; the defaults give r4.2's population and imbalance over a shorter period."""

    users: int = 1000
    """Number of users (r4.2: 1,000)."""
    days: int = 120
    """Calendar days of logs, starting on `start` (r4.2: about 500)."""
    insider_fraction: float = 0.07
    """Share of users who are insiders (r4.2: 70 of 1,000)."""
    start: str = "2010-01-04"
    """First day (ISO date); r4.2 starts in January 2010."""

    def __post_init__(self) -> None:
        if not 20 <= self.users <= 100_000:
            raise ConfigError("users", f"must be 20..100000, got {self.users}")
        if not 60 <= self.days <= 1000:
            raise ConfigError("days", f"must be 60..1000 (insiders need a history), got {self.days}")
        if not 0.0 < self.insider_fraction < 0.5:
            raise ConfigError("insider_fraction", f"must be in (0, 0.5), got {self.insider_fraction}")


@dataclass(frozen=True, slots=True)
class Insider:
    """One insider, as r4.2's answers list them: user id, scenario (1-3), first and last malicious day."""

    user: str
    scenario: int
    first_day: int
    last_day: int


@dataclass(frozen=True, slots=True)
class SyntheticLogs:
    """The generated tables (column name -> array, one row per record, sorted by date) and the truth."""

    start: np.datetime64
    days: int
    directory: Directory
    tables: dict[str, dict[str, np.ndarray]]
    insiders: tuple[Insider, ...]
    malicious: np.ndarray
    """(users, days) bool: the user-day holds an injected malicious event."""


def generate(config: SynthConfig, rng: np.random.Generator) -> SyntheticLogs:
    """Draw one synthetic data set; the same config and seed give the same logs."""
    n, days = config.users, config.days
    start = np.datetime64(config.start, "s")
    directory, habits = _population(n, days, rng)
    insiders_idx, scenarios = _pick_insiders(config, directory, rng)
    habits["usb"][insiders_idx[scenarios == 1]] = False  # scenario 1: never used a drive before
    windows = _windows(days, scenarios, rng)
    left = directory.left_day.copy()
    for user, (_, last) in zip(insiders_idx, windows, strict=True):
        left[user] = min(days, last + 1 + int(rng.integers(1, 4)))
    directory = Directory(
        ldap=directory.ldap,
        own_pc=directory.own_pc,
        hired_day=directory.hired_day,
        left_day=left,
        authorised=directory.authorised,
    )
    present = _presence(directory, habits, days, start, rng)
    builder = rec.Builder(start_s=0, days=days, users=n, malicious=np.zeros((n, days), dtype=bool))
    _benign(builder, directory, habits, present, rng)
    insiders = []
    for user, scenario, (first, last) in zip(insiders_idx, scenarios, windows, strict=True):
        _inject(builder, directory, habits, int(user), int(scenario), first, last, rng)
        insiders.append(Insider(str(directory.user_ids[user]), int(scenario), first, last))
    tables = {name: rec.finish(builder, name, directory, start) for name in SCHEMA}
    return SyntheticLogs(
        start=start,
        days=days,
        directory=directory,
        tables=tables,
        insiders=tuple(insiders),
        malicious=builder.malicious,
    )


def cert_date_strings(dates: np.ndarray) -> np.ndarray:
    """r4.2's date form, "MM/DD/YYYY HH:MM:SS", for a datetime64 column."""
    iso = np.datetime_as_string(dates.astype("datetime64[s]"), unit="s")
    return np.array([f"{s[5:7]}/{s[8:10]}/{s[0:4]} {s[11:19]}" for s in iso.tolist()], dtype=str)


# Population -----------------------------------------------------------------------------------------------


def _population(n: int, days: int, rng: np.random.Generator) -> tuple[Directory, dict[str, np.ndarray]]:
    letters = rng.integers(0, 26, size=(n, 3))
    digits = rng.permutation(9000)[:n] + 1000 if n <= 9000 else rng.permutation(n) + 10_000
    ids = np.array(
        ["".join(chr(65 + c) for c in row) + str(d) for row, d in zip(letters.tolist(), digits, strict=True)]
    )
    order = np.argsort(ids)
    ids = ids[order]
    dept = rng.choice(len(DEPARTMENTS), size=n, p=_DEPT_SHARE)
    role = np.empty(n, dtype=object)
    clinical = dept < len(CLINICAL)
    role[clinical] = np.array(_CLINICAL_ROLES, dtype=object)[
        rng.choice(4, clinical.sum(), p=[0.3, 0.4, 0.2, 0.1])
    ]
    admin = dept == DEPARTMENTS.index("Administration")
    role[admin] = np.where(rng.random(admin.sum()) < 0.2, "Manager", "Clerk")
    it = dept == DEPARTMENTS.index("IT")
    role[it] = np.where(rng.random(it.sum()) < 0.6, "ITAdmin", "Developer")
    role = role.astype(str)
    names = np.array(
        [f"{_FIRST[a]} {_LAST[b]}" for a, b in rng.integers(0, 10, size=(n, 2)).tolist()], dtype=str
    )
    # Each department's first user heads it and supervises the others.
    supervisor = np.empty(n, dtype=object)
    for d in range(len(DEPARTMENTS)):
        members = np.flatnonzero(dept == d)
        if len(members) == 0:
            continue
        supervisor[members] = str(ids[members[0]])
        supervisor[members[0]] = ""
    authorised = np.zeros((n, len(DEPARTMENTS)), dtype=bool)
    authorised[np.arange(n), dept] = True
    second = clinical & (rng.random(n) < 0.3)
    authorised[second, rng.integers(0, len(CLINICAL), second.sum())] = True
    reader = clinical & (dept == 0) & (role == "Physician")  # radiologists read every department's studies
    authorised[reader, : len(CLINICAL)] = True
    authorised[it, DEPARTMENTS.index("IT")] = False  # IT holds no patient data of its own
    ldap = {
        "employee_name": names,
        "user_id": ids,
        "email": np.char.add(np.char.add(np.char.lower(ids), "@"), COMPANY_DOMAIN),
        "role": role,
        "business_unit": np.full(n, "1"),
        "functional_unit": np.where(clinical, "1 - Clinical", "2 - Support"),
        "department": np.array(DEPARTMENTS)[dept],
        "team": np.char.add("Team ", (rng.integers(1, 5, n)).astype(str)),
        "supervisor": supervisor.astype(str),
    }
    hired = np.where(rng.random(n) < 0.05, rng.integers(10, max(11, days // 2), n), 0)
    left = np.where(rng.random(n) < 0.03, rng.integers(days // 2, days, n), days)
    pcs = np.char.add("PC-", (rng.permutation(9000)[:n] + 1000).astype(str)) if n <= 9000 else None
    if pcs is None:
        pcs = np.char.add("PC-", (np.arange(n) + 10_000).astype(str))
    night = clinical & (rng.random(n) < 0.08)
    habits = {
        "dept": dept,
        "night": night,
        "start_h": np.where(night, rng.normal(20.0, 0.7, n), rng.normal(8.0, 0.8, n)),
        "length_h": np.clip(rng.normal(9.0, 0.6, n), 6.0, 12.0),
        "usb": rng.random(n) < np.where(it, 0.5, 0.2),
        "http_rate": rng.lognormal(np.log(5.0), 0.5, n),
        "email_rate": rng.lognormal(np.log(3.0), 0.5, n),
        "external": rng.beta(2.0, 10.0, n),
        "req_rate": np.where(clinical, rng.lognormal(np.log(8.0), 0.5, n), np.where(admin, 2.0, 0.05)),
        "consult": rng.beta(1.0, 60.0, n),
        "weekend": np.where(night | (dept == DEPARTMENTS.index("Emergency")), 0.5, 0.08),
        "role": role,
    }
    return (
        Directory(ldap=ldap, own_pc=pcs, hired_day=hired, left_day=left, authorised=authorised),
        habits,
    )


def _pick_insiders(
    config: SynthConfig, directory: Directory, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = config.users
    stays = (directory.hired_day == 0) & (directory.left_day == config.days)
    has_supervisor = directory.ldap["supervisor"] != ""
    count = max(3, round(n * config.insider_fraction))
    n3 = max(1, round(count * 10 / 70))
    n1 = round(count * 30 / 70)
    admins = np.flatnonzero(stays & has_supervisor & (directory.ldap["role"] == "ITAdmin"))
    chosen3 = rng.choice(admins, size=min(n3, len(admins)), replace=False)
    others = np.setdiff1d(np.flatnonzero(stays & has_supervisor), chosen3)
    rest = rng.choice(others, size=count - len(chosen3), replace=False)
    n1 += n3 - len(chosen3)
    users = np.concatenate([chosen3, rest])
    scenarios = np.concatenate([np.full(len(chosen3), 3), np.full(n1, 1), np.full(len(rest) - n1, 2)])
    return users.astype(np.int64), scenarios.astype(np.int64)


def _windows(days: int, scenarios: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    out = []
    for s in scenarios.tolist():
        span = {1: int(rng.integers(3, 10)), 2: int(rng.integers(18, 32)), 3: 3}[s]
        span = min(span, days // 4)
        # After the features' 14-day warm-up and a month of history where possible, and early enough to
        # leave afterwards.
        high = days - span - 3
        first = int(rng.integers(min(int(days * 0.45), high - 1), high))
        out.append((first, first + span - 1))
    return out


def _presence(
    directory: Directory,
    habits: dict[str, np.ndarray],
    days: int,
    start: np.datetime64,
    rng: np.random.Generator,
) -> np.ndarray:
    weekday = (np.arange(days) + (start.astype("datetime64[D]").astype(np.int64) + 3)) % 7  # 0 = Monday
    weekend = weekday >= 5
    p = np.where(weekend[None, :], habits["weekend"][:, None], 0.93)
    employed = (np.arange(days)[None, :] >= directory.hired_day[:, None]) & (
        np.arange(days)[None, :] < directory.left_day[:, None]
    )
    return (rng.random(p.shape) < p) & employed


def _events(
    counts: np.ndarray, habits: dict[str, np.ndarray], rng: np.random.Generator, stray: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """(user, seconds) for counts[u, d] events of each user-day, inside the user's hours but for `stray`."""
    user, day = np.nonzero(counts)
    reps = counts[user, day]
    user, day = np.repeat(user, reps), np.repeat(day, reps)
    hours = habits["start_h"][user] + rng.random(len(user)) * habits["length_h"][user]
    odd = rng.random(len(user)) < stray
    hours[odd] = rng.random(odd.sum()) * 24.0
    return user, (day * DAY_S + hours * HOUR_S).astype(np.int64)


def _benign(
    b: rec.Builder, d: Directory, habits: dict[str, np.ndarray], present: np.ndarray, rng: np.random.Generator
) -> None:
    n = present.shape[0]
    pcs = d.own_pc
    # logon/logoff around each present day, plus extra logons (screen unlocks) within it
    user, day = np.nonzero(present)
    t_on = (day * DAY_S + (habits["start_h"][user] + rng.normal(0, 0.3, len(user))) * HOUR_S).astype(np.int64)
    t_off = t_on + (habits["length_h"][user] * HOUR_S).astype(np.int64)
    shared = rng.random(len(user)) < 0.02
    pc = np.where(shared, pcs[rng.integers(0, n, len(user))], pcs[user])
    b.add("logon", user, t_on, pc=pc, activity="Logon")
    b.add("logon", user, t_off, pc=pc, activity="Logoff")
    u, t = _events(rng.poisson(0.6 * present), habits, rng)
    b.add("logon", u, t, pc=pcs[u], activity="Logon")
    # removable drives: connect, copy files, disconnect
    u, t = _events(rng.poisson(0.5 * present * habits["usb"][:, None]), habits, rng)
    rec.drive(b, u, t, pcs[u], rng.poisson(2.0, len(u)), rng)
    # web
    u, t = _events(rng.poisson(habits["http_rate"][:, None] * present), habits, rng)
    b.add("http", u, t, pc=pcs[u], **rec.urls(rng.choice(NORMAL_SITES, len(u)), "browse", rng))
    u, t = _events(rng.poisson(0.03 * present), habits, rng)
    b.add("http", u, t, pc=pcs[u], **rec.urls(rng.choice(JOB_SITES, len(u)), "career", rng))
    it = habits["dept"] == DEPARTMENTS.index("IT")
    u, t = _events(rng.poisson(0.04 * present * it[:, None]), habits, rng)
    b.add("http", u, t, pc=pcs[u], **rec.urls(rng.choice(HACK_SITES, len(u)), "security", rng))
    # email; managers now and then write to many colleagues
    u, t = _events(rng.poisson(habits["email_rate"][:, None] * present), habits, rng)
    rec.email(b, d, u, t, rng.random(len(u)) < habits["external"][u], 1 + rng.poisson(0.5, len(u)), rng)
    manager = (habits["role"] == "Manager") | (d.ldap["supervisor"] == "")
    u, t = _events(rng.poisson(0.02 * present * manager[:, None]), habits, rng)
    rec.email(b, d, u, t, np.zeros(len(u), dtype=bool), rng.integers(12, 30, len(u)), rng)
    # qlink requests
    u, t = _events(rng.poisson(habits["req_rate"][:, None] * present), habits, rng)
    consult = rng.random(len(u)) < habits["consult"][u]
    rec.requests(b, d, u, t, consult, rng, bulk=False)


# Insiders -------------------------------------------------------------------------------------------------


def _night(days: np.ndarray, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k times per day, each between 22:00 and 03:00 (the small hours count to the next day)."""
    day = np.repeat(days, k)
    hours = 22.0 + rng.random(len(day)) * 5.0
    return day, (day * DAY_S + hours * HOUR_S).astype(np.int64)


def _inject(
    b: rec.Builder,
    d: Directory,
    habits: dict[str, np.ndarray],
    user: int,
    scenario: int,
    first: int,
    last: int,
    rng: np.random.Generator,
) -> None:
    pc = d.own_pc[user]
    span = np.arange(first, last + 1)
    if scenario == 1:
        days = np.sort(rng.choice(span, size=max(2, len(span) // 2), replace=False))
        _, t = _night(days, rng, 1)
        one = np.full(len(t), user)
        b.add("logon", one, t, bad=True, pc=pc, activity="Logon")
        rec.drive(b, one, t + 600, np.full(len(t), pc), rng.poisson(8, len(t)), rng, bad=True)
        _, th = _night(days, rng, 3)
        b.add(
            "http",
            np.full(len(th), user),
            th,
            bad=True,
            pc=pc,
            **rec.urls(rng.choice(LEAK_SITES, len(th)), "upload", rng),
        )
        _bulk(b, d, user, days, rng, night=True)
    elif scenario == 2:
        job_days = np.sort(rng.choice(span[:-3], size=max(3, (len(span) - 3) // 3), replace=False))
        day = np.repeat(job_days, rng.poisson(3, len(job_days)) + 1)
        t = (day * DAY_S + (habits["start_h"][user] + rng.random(len(day)) * 8) * HOUR_S).astype(np.int64)
        b.add(
            "http",
            np.full(len(t), user),
            t,
            bad=True,
            pc=pc,
            **rec.urls(rng.choice(JOB_SITES, len(t)), "career", rng),
        )
        mail_days = job_days[rng.random(len(job_days)) < 0.5]
        t = (mail_days * DAY_S + (habits["start_h"][user] + 2) * HOUR_S).astype(np.int64)
        rec.email(
            b,
            d,
            np.full(len(t), user),
            t,
            np.ones(len(t), dtype=bool),
            np.ones(len(t), dtype=np.int64),
            rng,
            bad=True,
            content="resume application",
            external_domain=rng.choice(COMPETITORS, len(t)),
        )
        theft = span[-3:]
        day = np.repeat(theft, rng.poisson(4, len(theft)) + 1)
        t = (day * DAY_S + (habits["start_h"][user] + rng.random(len(day)) * 8) * HOUR_S).astype(np.int64)
        rec.drive(b, np.full(len(t), user), t, np.full(len(t), pc), rng.poisson(15, len(t)), rng, bad=True)
        _bulk(b, d, user, theft, rng, night=False)
    else:
        boss = int(np.searchsorted(d.user_ids, d.ldap["supervisor"][user]))
        boss_pc = d.own_pc[boss]
        t0 = int((first * DAY_S) + (habits["start_h"][user] + 3) * HOUR_S)
        b.add(
            "http",
            np.array([user]),
            np.array([t0]),
            bad=True,
            pc=pc,
            **rec.urls(np.array(HACK_SITES[:1]), "keylogger download", rng),
        )
        t1 = t0 + DAY_S + 2 * HOUR_S
        b.add("logon", np.array([user]), np.array([t1]), bad=True, pc=boss_pc, activity="Logon")
        rec.drive(
            b, np.array([user]), np.array([t1 + 300]), np.array([boss_pc]), np.array([1]), rng, bad=True
        )
        t2 = (first + 2) * DAY_S + 23 * HOUR_S
        b.add("logon", np.array([boss]), np.array([t2]), bad=True, pc=boss_pc, activity="Logon")
        rec.email(
            b,
            d,
            np.array([boss]),
            np.array([t2 + 600]),
            np.array([True]),
            np.array([40]),
            rng,
            bad=True,
            content="alarming mass announcement",
        )
        _bulk(b, d, user, np.array([first + 1, first + 2]), rng, night=True)


def _bulk(
    b: rec.Builder, d: Directory, user: int, days: np.ndarray, rng: np.random.Generator, *, night: bool
) -> None:
    per_day = rng.poisson(40, len(days)) + 10
    day = np.repeat(days, per_day)
    hours = (22.0 + rng.random(len(day)) * 5.0) if night else (17.0 + rng.random(len(day)) * 4.0)
    t = (day * DAY_S + hours * HOUR_S).astype(np.int64)
    outside = rng.random(len(t)) < (0.8 if night else 0.5)
    rec.requests(b, d, np.full(len(t), user), t, outside, rng, bulk=True)
