"""Record writers for the synthetic logs: a builder that collects rows per table, one helper per kind of
record (a drive session with its file copies, web visits, email, qlink requests), and the final sort."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cert_schema import (
    CLINICAL,
    DAY_S,
    DEPARTMENTS,
    MESSAGE_TYPES,
    MODALITIES,
    SCHEMA,
    Directory,
)


@dataclass(slots=True)
class Builder:
    """Collects records per table as (user index, seconds from start, columns) before the final sort."""

    start_s: int
    days: int
    users: int
    parts: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    malicious: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))

    def add(self, table: str, user: np.ndarray, t: np.ndarray, *, bad: bool = False, **cols: object) -> None:
        user = np.asarray(user, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        n = len(t)
        if n == 0:
            return
        keep = (t >= 0) & (t < self.days * DAY_S)
        part = {"_user": user[keep], "_t": t[keep]}
        for name, value in cols.items():
            arr = np.asarray(value)
            if arr.dtype.kind in "UO":
                # Variable-width strings: one 40-recipient email must not widen every row of its column.
                arr = arr.astype(np.dtypes.StringDType())
            part[name] = (np.full(n, arr) if arr.ndim == 0 else arr)[keep]
        self.parts.setdefault(table, []).append(part)
        if bad:
            self.malicious[part["_user"], part["_t"] // DAY_S] = True


def drive(
    b: Builder,
    u: np.ndarray,
    t: np.ndarray,
    pc: np.ndarray,
    files: np.ndarray,
    rng: np.random.Generator,
    *,
    bad: bool = False,
) -> None:
    b.add("device", u, t, bad=bad, pc=pc, activity="Connect")
    stay = rng.integers(5 * 60, 60 * 60, len(u))
    b.add("device", u, t + stay, bad=bad, pc=pc, activity="Disconnect")
    fu, ft, fpc = np.repeat(u, files), np.repeat(t, files), np.repeat(pc, files)
    ft = ft + (rng.random(len(ft)) * np.repeat(stay, files)).astype(np.int64)
    names = np.char.add(np.char.add("R:\\", rng.integers(100000, 999999, len(fu)).astype(str)), ".doc")
    b.add("file", fu, ft, bad=bad, pc=fpc, filename=names, content="report document")


def urls(hosts: np.ndarray, content: str, rng: np.random.Generator) -> dict[str, Any]:
    paths = rng.integers(1000, 9999, len(hosts)).astype(str)
    return {
        "url": np.char.add(np.char.add(np.char.add("http://", hosts), "/"), paths),
        "content": np.full(len(hosts), content),
    }


def email(
    b: Builder,
    d: Directory,
    u: np.ndarray,
    t: np.ndarray,
    external: np.ndarray,
    recipients: np.ndarray,
    rng: np.random.Generator,
    *,
    bad: bool = False,
    content: str = "meeting schedule",
    external_domain: np.ndarray | None = None,
) -> None:
    emails = d.ldap["email"]
    domain = (
        external_domain if external_domain is not None else rng.choice(("gmail.com", "yahoo.com"), len(u))
    )
    to = emails[rng.integers(0, len(emails), len(u))].astype(object)
    outside = np.char.add(np.char.add("contact", rng.integers(1, 999, len(u)).astype(str)), "@")
    outside = np.char.add(outside, domain.astype(str))
    to[external] = outside[external]
    for j in range(1, int(recipients.max(initial=1))):
        more = np.flatnonzero(recipients > j)
        to[more] = to[more] + ";" + emails[rng.integers(0, len(emails), len(more))].astype(object)
    b.add(
        "email",
        u,
        t,
        bad=bad,
        pc=d.own_pc[u],
        to=to.astype(str),
        cc="",
        bcc="",
        **{"from": emails[u]},
        size=rng.integers(2_000, 60_000, len(u)),
        attachments=rng.poisson(0.3, len(u)),
        content=content,
    )


def requests(
    b: Builder,
    d: Directory,
    u: np.ndarray,
    t: np.ndarray,
    outside: np.ndarray,
    rng: np.random.Generator,
    *,
    bulk: bool,
) -> None:
    if len(u) == 0:
        return
    allowed = d.authorised[u][:, : len(CLINICAL)] | np.zeros((len(u), len(CLINICAL)), dtype=bool)
    # random authorised department (or, for outside requests or users with none, an unauthorised one)
    score = rng.random((len(u), len(CLINICAL)))
    inside = np.argmax(np.where(allowed, score, -1.0), axis=1)
    out = np.argmax(np.where(~allowed, score, -1.0), axis=1)
    has_in, has_out = allowed.any(axis=1), (~allowed).any(axis=1)
    dept = np.where((outside & has_out) | ~has_in, out, inside)
    admin_dept = DEPARTMENTS.index("Administration")
    admin_user = d.ldap["department"][u] == "Administration"
    dept = np.where(admin_user & ~outside, admin_dept, dept)
    fetch = rng.random(len(u)) < (0.95 if bulk else 0.7)
    dicom = rng.random(len(u)) < (0.9 if bulk else 0.5)
    mtype = np.where(dicom, 0, rng.integers(1, len(MESSAGE_TYPES), len(u)))
    options = np.array([len(MODALITIES[x]) for x in DEPARTMENTS])
    table = np.array([[MODALITIES[x][i % len(MODALITIES[x])] for i in range(3)] for x in DEPARTMENTS])
    modality = table[dept, (rng.random(len(u)) * options[dept]).astype(np.int64)]
    volume = np.where(
        fetch & dicom,
        rng.lognormal(np.log(30e6), 0.7, len(u)),
        np.where(fetch, rng.lognormal(np.log(4e3), 0.5, len(u)), rng.lognormal(np.log(2e3), 0.3, len(u))),
    ).astype(np.int64)
    b.add(
        "requests",
        u,
        t,
        bad=bulk,
        action=np.where(fetch, "fetch", "list"),
        department=np.array(DEPARTMENTS)[dept],
        modality=np.where(dicom, modality, "none"),
        message_type=np.array(MESSAGE_TYPES)[mtype],
        volume=volume,
    )


def finish(b: Builder, name: str, d: Directory, start: np.datetime64) -> dict[str, np.ndarray]:
    columns = SCHEMA[name]
    parts = b.parts.get(name, [])
    if not parts:
        return {c: np.zeros(0, dtype="datetime64[s]" if c == "date" else str) for c in columns}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["_t"], kind="stable")
    n = len(order)
    out: dict[str, np.ndarray] = {}
    for c in columns:
        if c == "id":
            out[c] = np.arange(n, dtype=np.int64)
        elif c == "date":
            out[c] = start + merged["_t"][order].astype("timedelta64[s]")
        elif c == "user":
            out[c] = d.user_ids[merged["_user"][order]]
        else:
            out[c] = merged[c][order]
    return out
