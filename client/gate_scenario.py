"""`qlink gate scenario`: the intent gate on a running testbed, with people.

It writes a loopback deployment, starts the channel service and both daemons, and sends hospital-b a few
small CT studies for each of six departments (DICOM InstitutionalDepartmentName, mapped by hospital-b's
`[departments]` rules). hospital-b runs the gate in `enforce` mode with its test clock on, so weeks of
history can be replayed in a minute. At hospital-b, 21 users are added through the API, each with the
broad `clinician` role (every study, every department: the roles alone would stop nobody) and the
department the user works for:

- 20 ordinary users: for `history_days` days each asks for a few studies a day, in working hours (two
  emergency physicians work nights), nearly always of their own department (2 % consults elsewhere);
  today each fetches a few studies of their own department, as usual.
- 1 insider (a radiology user with the same kind of history): today at 23:00 starts fetching every other
  department's studies, one after another.

Every request is a real fetch through the daemon's API with the user's token (the manifest, then every
file). The gate must let the ordinary users through, step the insider up before the first of the other
departments' studies leaves; under a break-glass grant the insider then takes (alerted and audited), it
must refuse the fetch once the score reaches the deny threshold, before the bulk has left. The audit log
must hold a `gate_request` record for every request. The per-request latency of the gate inside the
daemon (p50/p99, the model loaded) is read from GET /v1/gate.

Behaviour is simulated with a seeded generator (`--seed`): these are pretend people, not secrets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

A, B = "hospital-a", "hospital-b"
DEPARTMENTS = ("Radiology", "Cardiology", "Oncology", "Emergency", "Neurology", "Pediatrics")
STAFF = {"Radiology": 5, "Cardiology": 4, "Oncology": 3, "Emergency": 3, "Neurology": 3, "Pediatrics": 2}
"""Ordinary users per department (20)."""
NIGHT_SHIFT = 2
"""Emergency physicians on nights: night requests are their normal, which the gate must learn."""
STUDIES_PER_DEPARTMENT = 4
CONSULT_SHARE = 0.02
ACTIVE_DAY_SHARE = 0.75
MIN_OWNED_BITS = 100_000
INSIDER_STARTS_AT = 23.0
"""Local hour today at which the insider starts."""
SCENARIO_CONFIG = """
[[access.role]]
name = "clinician"
kinds = ["study", "images", "ehr"]

[gate]
mode = "enforce"
test_clock = true
deny_at = {deny_at}
timezone = "UTC"
work_hours = [7, 19]
"""
RULE = """
[[departments.rule]]
department = "{name}"
dicom_department = ["{code}"]
"""


@dataclass(slots=True)
class Person:
    name: str
    department: str
    night: bool
    insider: bool = False
    token: str = ""
    history: int = 0
    history_refused: int = 0
    today: list[dict[str, Any]] = field(default_factory=list)


def study_file(department: str, index: int) -> bytes:
    """One small CT instance whose InstitutionalDepartmentName (0008,1040) names `department`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    seed = f"{department}-{index}"
    study_uid = generate_uid(entropy_srcs=["qlink gate scenario study", seed])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["qlink gate scenario instance", seed])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["qlink gate scenario series", seed])
    ds.Modality = "CT"
    ds.PatientName = f"SCENARIO^{department.upper()}{index}"
    ds.PatientID = f"GS-{department[:3].upper()}-{index:03d}"
    ds.StudyDate = "20261201"
    ds.InstitutionalDepartmentName = department.upper()
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    ds.PixelData = rng.integers(0, 4096, size=(32, 32), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class Scenario:
    def __init__(self, deployment: Any, *, seed: int, history_days: int, timeout: float) -> None:
        from .commands.demo import _token
        from .data_http import DataTarget

        self.deployment = deployment
        self.rng = np.random.default_rng(seed)
        self.history_days = history_days
        self.timeout = timeout
        self.a = DataTarget(deployment.local_url(A), _token(deployment, A))
        self.b = DataTarget(deployment.local_url(B), _token(deployment, B))
        self.studies: dict[str, list[str]] = {}
        self.people: list[Person] = []
        self.today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    # ---- setup
    def wait_for_key(self) -> None:
        from .commands.demo import _wait_for

        _wait_for(
            lambda: min(self._owned(t) for t in (self.a, self.b)) >= MIN_OWNED_BITS,
            self.timeout,
            "quantum key in both pools",
        )

    @staticmethod
    def _owned(target: Any) -> int:
        status, body = target.json("GET", "/v1/status")
        return int(body["links"][0]["pool_bits_owned"]) if status == 200 and body["links"] else 0

    def send_studies(self, folder: Path) -> None:
        from qlinkmed.qlinkd.content import validate

        from .commands.send import upload

        for department in DEPARTMENTS:
            self.studies[department] = []
            for index in range(STUDIES_PER_DEPARTMENT):
                path = folder / f"{department}-{index}.dcm"
                path.write_bytes(study_file(department, index))
                info = validate(path.name, path.read_bytes())
                result = upload(
                    self.a, B, "study", [(path, info)], info.study_uid, wait=self.timeout, show_progress=False
                )
                if result.get("state") != "delivered":
                    raise RuntimeError(f"study {path.name} was not delivered: {result}")
                self.studies[department].append(result["transfer_id"])

    def add_people(self) -> None:
        night_left = NIGHT_SHIFT
        for department, count in STAFF.items():
            for i in range(count):
                night = department == "Emergency" and night_left > 0
                night_left -= night
                self.people.append(Person(f"{department[:3].lower()}{i + 1}", department, night))
        self.people.append(Person("insider", "Radiology", False, insider=True))
        for person in self.people:
            body = {
                "name": person.name,
                "roles": ["clinician"],
                "departments": [person.department],
                "who": "scenario",
            }
            status, answer = self.b.json("POST", "/v1/users", body=json.dumps(body).encode())
            if status != 201:
                raise RuntimeError(f"adding user {person.name}: HTTP {status} {answer}")
            person.token = answer["token"]

    # ---- requests
    def _set_clock(self, moment: dt.datetime) -> None:
        body = json.dumps({"now": moment.timestamp(), "who": "scenario"}).encode()
        status, answer = self.b.json("POST", "/v1/gate/clock", body=body)
        if status != 200:
            raise RuntimeError(f"setting the gate's test clock: HTTP {status} {answer}")

    def _as(self, person: Person) -> Any:
        from .data_http import DataTarget

        return DataTarget(self.deployment.local_url(B), person.token)

    def fetch(self, person: Person, transfer: str, *, files: bool) -> dict[str, Any]:
        """The manifest, then (with `files`) every file: what `qlink inbox fetch` asks for."""
        target = self._as(person)
        try:
            tid = urllib.parse.quote(transfer)
            status, body = target.json("GET", f"/v1/inbox/{tid}")
            taken = 0
            if status == 200 and files:
                for entry in body["file_list"]:
                    got, data, _ = target.request("GET", f"/v1/inbox/{tid}/files/{entry['index']}")
                    if got != 200:
                        status, body = got, json.loads(data)
                        break
                    taken += len(data)
            return {"status": status, "bytes": taken, "answer": body}
        finally:
            target.close()

    def _pick(self, person: Person) -> tuple[str, str]:
        department = person.department
        if self.rng.random() < CONSULT_SHARE:
            department = str(self.rng.choice([d for d in DEPARTMENTS if d != person.department]))
        return department, str(self.rng.choice(self.studies[department]))

    def _times(self, person: Person, day: dt.datetime, count: int) -> list[dt.datetime]:
        # A night shift's 22:00-05:00 is counted on the day each hour falls.
        hours = self.rng.uniform(22, 29, count) % 24 if person.night else self.rng.uniform(8, 17, count)
        return [day + dt.timedelta(hours=float(h)) for h in sorted(hours)]

    def replay_history(self) -> None:
        for back in range(self.history_days, 0, -1):
            day = self.today - dt.timedelta(days=back)
            plan: list[tuple[dt.datetime, Person]] = []
            for person in self.people:
                if self.rng.random() < ACTIVE_DAY_SHARE:
                    count = 1 + int(self.rng.poisson(3))
                    plan.extend((moment, person) for moment in self._times(person, day, count))
            for moment, person in sorted(plan, key=lambda p: p[0]):
                self._set_clock(moment)
                outcome = self.fetch(person, self._pick(person)[1], files=False)
                person.history += 1
                person.history_refused += outcome["status"] != 200

    def ordinary_today(self) -> None:
        plan: list[tuple[dt.datetime, Person]] = []
        for person in self.people:
            if not person.insider:
                plan.extend(
                    (m, person) for m in self._times(person, self.today, 2 + int(self.rng.poisson(2)))
                )
        for moment, person in sorted(plan, key=lambda p: p[0]):
            if moment.hour >= INSIDER_STARTS_AT:
                continue
            self._set_clock(moment)
            department, transfer = self._pick(person)
            outcome = self.fetch(person, transfer, files=True)
            person.today.append(self._row(moment, department, transfer, outcome))

    def insider_tonight(self) -> dict[str, Any]:
        insider = next(p for p in self.people if p.insider)
        targets = [(d, t) for d in DEPARTMENTS if d != insider.department for t in self.studies[d]]
        moment = self.today + dt.timedelta(hours=INSIDER_STARTS_AT)
        glass: dict[str, Any] | None = None
        for department, transfer in targets:
            self._set_clock(moment)
            outcome = self.fetch(insider, transfer, files=True)
            row = self._row(moment, department, transfer, outcome)
            insider.today.append(row)
            moment += dt.timedelta(minutes=2)
            if row["decision"] == "step-up" and glass is None:
                # The insider claims an emergency: allowed, alerted and audited, and the gate keeps scoring.
                body = json.dumps({"reason": "covering night consults", "minutes": 120}).encode()
                target = self._as(insider)
                try:
                    status, _ = target.json("POST", "/v1/break-glass", body=body)
                finally:
                    target.close()
                glass = {"status": status, "at": row["at"]}
                self._set_clock(moment)
                retry = self._row(moment, department, transfer, self.fetch(insider, transfer, files=True))
                retry["retry_under_break_glass"] = True
                insider.today.append(retry)
                moment += dt.timedelta(minutes=2)
            elif row["decision"] == "deny":
                break
        return {"targets": len(targets), "break_glass": glass}

    @staticmethod
    def _row(moment: dt.datetime, department: str, transfer: str, outcome: dict[str, Any]) -> dict[str, Any]:
        answer = outcome["answer"]
        gate = answer.get("gate", {}) if isinstance(answer, dict) else {}
        return {
            "at": moment.strftime("%Y-%m-%d %H:%M"),
            "department": department,
            "transfer": transfer,
            "status": outcome["status"],
            "bytes": outcome["bytes"],
            "decision": gate.get("decision", "allow" if outcome["status"] == 200 else "refused"),
            "score": gate.get("score"),
            "reasons": answer.get("reasons", []) if outcome["status"] != 200 else [],
        }

    # ---- the verdict
    def audit_records(self) -> list[dict[str, Any]]:
        path = self.deployment.root / "state" / B / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def summary(self, tonight: dict[str, Any]) -> dict[str, Any]:
        status, gate = self.b.json("GET", "/v1/gate")
        audit = self.audit_records()
        records = [r for r in audit if r["event"] == "gate_request"]
        ids = self._user_ids()
        scored_today = {
            p.name: [r for r in records if r["user"] == ids[p.name] and r["at"] >= self.today.timestamp()]
            for p in self.people
        }
        insider = next(p for p in self.people if p.insider)
        ordinary = [p for p in self.people if not p.insider]
        # The gate's own record of each of the insider's requests: its score, also where the fetch passed.
        judged = {r["transfer"]: r for r in scored_today[insider.name] if "score" in r}
        for row in insider.today:
            record = judged.get(row["transfer"])
            if record is not None:
                row["score"] = record["score"]
                if row["status"] == 200 and record["decision"] != "allow":
                    row["decision"] = f"{record['decision']} (break-glass)"
        outside = [r for r in insider.today if not r.get("retry_under_break_glass")]
        first = outside[0] if outside else None
        left_before_glass = sum(
            r["bytes"]
            for r in outside
            if tonight["break_glass"] is None or r["at"] < tonight["break_glass"]["at"]
        )
        left = sum(1 for r in insider.today if r["status"] == 200)
        denied = [r for r in insider.today if r["decision"] == "deny"]
        scores = [r["score"] for p in ordinary for r in scored_today[p.name] if r.get("score") is not None]
        checks = {
            "ordinary users never refused today": all(r["status"] == 200 for p in ordinary for r in p.today),
            "insider stepped up at the first other-department study, nothing taken": first is not None
            and first["decision"] == "step-up"
            and first["bytes"] == 0
            and left_before_glass == 0,
            "insider refused under break-glass before the bulk left": bool(denied)
            and left < tonight["targets"] // 2,
            "break-glass granted, alerted and audited": tonight["break_glass"] is not None
            and tonight["break_glass"]["status"] == 200
            and any(r["event"] == "break_glass" and r["user"] == ids["insider"] for r in audit),
            "every request today audited as gate_request": all(
                len({r["transfer"] for r in scored_today[p.name]}) == len({r["transfer"] for r in p.today})
                for p in self.people
            ),
        }
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "history_days": self.history_days,
            "users": [
                {
                    "name": p.name,
                    "department": p.department,
                    "night_shift": p.night,
                    "insider": p.insider,
                    "history_requests": p.history,
                    "history_refused": p.history_refused,
                    "today": len(p.today),
                    "today_refused": sum(r["status"] != 200 for r in p.today),
                    "max_score_today": max(
                        (r["score"] for r in scored_today[p.name] if r.get("score") is not None), default=None
                    ),
                }
                for p in self.people
            ],
            "insider": insider.today,
            "insider_studies_taken": left,
            "insider_targets": tonight["targets"],
            "ordinary_max_score": max(scores, default=None),
            "gate": gate if status == 200 else {},
        }

    def _user_ids(self) -> dict[str, str]:
        status, body = self.b.json("GET", "/v1/users")
        return {u["name"]: u["id"] for u in body["users"]} if status == 200 else {}


def scenario_config(deny_at: float) -> str:
    rules = "".join(RULE.format(name=d, code=d.upper()) for d in DEPARTMENTS)
    return SCENARIO_CONFIG.format(deny_at=deny_at) + rules


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"qlink gate scenario: {'PASS' if s['ok'] else 'FAIL'} ({s['history_days']} days of history:"
        " fetches and refusals per user, then today's; the highest intent score of today)"
    ]
    lines.append(
        f"{'user':<10} {'department':<11} {'shift':<6} {'fetches':>8} {'refused':>8} {'today':>6}"
        f" {'refused':>8} {'max score':>10}"
    )
    for u in s["users"]:
        score = "-" if u["max_score_today"] is None else f"{u['max_score_today']:.2f}"
        shift = "night" if u["night_shift"] else "day"
        name = u["name"] + (" *" if u["insider"] else "")
        lines.append(
            f"{name:<10} {u['department']:<11} {shift:<6} {u['history_requests']:>8}"
            f" {u['history_refused']:>8} {u['today']:>6} {u['today_refused']:>8} {score:>10}"
        )
    lines.append("")
    lines.append("the insider tonight (* above):")
    for r in s["insider"]:
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        glass = " (retried under break-glass)" if r.get("retry_under_break_glass") else ""
        lines.append(
            f"  {r['at']}  {r['department']:<11} HTTP {r['status']}  {r['decision']:<21} score {score:>5}"
            f"  {r['bytes']:>7} bytes{glass}"
        )
        if r["reasons"] and r["status"] != 200:
            lines.extend(f"      - {reason}" for reason in r["reasons"])
    lines.append(
        f"studies the insider took: {s['insider_studies_taken']} of {s['insider_targets']};"
        f" highest score of an ordinary user today: {s['ordinary_max_score']:.2f}"
    )
    gate = s.get("gate") or {}
    latency = gate.get("latency", {})
    if latency.get("samples"):
        lines.append(
            f"gate in the daemon ({gate['mode']}, step-up from {gate['step_up_at']:.2f}, deny from"
            f" {gate['deny_at']:.2f}): {latency['samples']} assessments, p50 {latency['p50_ms']:.2f} ms,"
            f" p99 {latency['p99_ms']:.2f} ms"
        )
    lines.append("")
    lines.extend(f"[{'x' if ok else ' '}] {name}" for name, ok in s["checks"].items())
    return "\n".join(lines)
