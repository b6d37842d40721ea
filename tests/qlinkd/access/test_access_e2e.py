"""Per-user access end to end (issue 18, item 1): the channel service and two facility daemons as real
processes on loopback; a CT study and an HL7 message go from hospital-a to hospital-b. At B, a radiology
user sees and fetches the study but not the message (403 with the reason, audited with the user); the
facility token no longer reads the inbox and says so; break-glass lets the radiology user fetch the
message, audited as break-glass reads, shown in `qlink status` and on /metrics, and once it expires the
message is refused again. Token rotation and disabling take effect at the next request. The HTTP answers
are read with httpx (not our client) as well as through `qlink`. Waits poll; nothing sleeps blindly."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.data_api import FACILITY_READS
from qlinkmed.qlinkd.testbed.deployment import Deployment
from tests.cli import qlink
from tests.dicom_factory import make_ct_study
from tests.paths import DATA
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 64_000
RADIOLOGY = """
[[access.role]]
name = "radiology"
kinds = ["study", "images"]
peers = ["hospital-a"]

[[access.role]]
name = "mr-only"
kinds = ["study"]
modalities = ["MR"]

[[access.role]]
name = "lab"
kinds = ["ehr"]
message_types = ["ORU^R01"]
"""
GLASS_MINUTES = 0.15
"""9 s: long enough for one fetch on a busy machine, short enough to watch it expire."""


@dataclass(frozen=True, slots=True)
class Site:
    deployment: Deployment
    a: DataTarget
    b_url: str
    b_facility_token: str
    study: str
    message: str

    @property
    def config_b(self) -> str:
        return str(self.deployment.facilities[B])


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def site(module_testbeds: Testbeds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    config_b = deployment.facilities[B]
    config_b.write_text(config_b.read_text() + RADIOLOGY)
    module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    folder = tmp_path_factory.mktemp("study") / "ct"
    folder.mkdir()
    for i, data in enumerate(make_ct_study(2, 32, 32, seed=3)):
        (folder / f"ct{i}.dcm").write_bytes(data)
    sent = {}
    for args in (("send", "--to", B, str(folder)), ("ehr", "send", "--to", B, str(DATA / "oru_r01.hl7"))):
        result = qlink_plain(*args, "--json", "--config", str(deployment.facilities[A]))
        sent[result["kind"]] = result["transfer_id"]
        assert result["state"] == "delivered", result
    yield Site(deployment, a, deployment.local_url(B), _token(deployment, B), sent["study"], sent["ehr"])
    a.close()
    b.close()


def qlink_plain(*args: str) -> dict[str, Any]:
    """`qlink ARGS --json` in-process, outside a test (no capsys): its one JSON line."""
    import contextlib
    import io

    from qlinkmed.client.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    assert code == 0, out.getvalue()
    return dict(json.loads(out.getvalue().splitlines()[-1]))


def _get(site: Site, path: str, token: str) -> httpx.Response:
    return httpx.get(f"{site.b_url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _audit(site: Site) -> list[dict[str, Any]]:
    path = site.deployment.root / "state" / B / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _add(site: Site, capsys: pytest.CaptureFixture[str], name: str, out: Path, *roles: str) -> dict[str, Any]:
    flags = [x for role in roles for x in ("--role", role)]
    code, printed, err = qlink(
        capsys, "user", "add", name, *flags, "--user-token-out", str(out), "--json", "--config", site.config_b
    )
    assert code == 0, err
    return dict(json.loads(printed)["user"])


def _metric(site: Site, name: str) -> float:
    text = httpx.get(f"{site.b_url}/metrics", timeout=30).text
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_the_facility_token_no_longer_reads_the_inbox(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    for path in ("/v1/inbox", f"/v1/inbox/{site.study}", f"/v1/inbox/{site.study}/files/0"):
        answer = _get(site, path, site.b_facility_token)
        assert answer.status_code == 403, path
        assert answer.json()["message"] == FACILITY_READS
    # It still sends and still lists the outbox: those are the facility's.
    assert site.a.json("GET", "/v1/transfers")[0] == 200
    # `qlink inbox list` without a user token says what it needs.
    code, _, err = qlink(capsys, "inbox", "list", "--config", site.config_b)
    assert code == 2 and "reading patient data needs a user token" in err
    assert _get(site, "/v1/inbox", "no-such-token").status_code == 401


def test_a_radiology_user_reads_the_study_not_the_message_and_break_glass_opens_it_for_a_while(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "rad.token"
    user = _add(site, capsys, "rad", token_file, "radiology")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    as_rad = ("--user-token-file", str(token_file), "--config", site.config_b)

    code, out, err = qlink(capsys, "inbox", "list", "--json", *as_rad)
    assert code == 0, err
    listing = json.loads(out)
    assert [e["transfer_id"] for e in listing["inbox"]] == [site.study] and listing["hidden"] == 1
    code, out, err = qlink(capsys, "inbox", "fetch", site.study, "--out", str(tmp_path / "got"), *as_rad)
    assert code == 0, err
    assert len(list((tmp_path / "got" / site.study).iterdir())) == 2

    refused = _get(site, f"/v1/inbox/{site.message}", token)
    assert refused.status_code == 403
    assert refused.json()["reasons"] == ["role radiology may see study, images; this transfer is ehr"]
    code, _, err = qlink(capsys, "inbox", "fetch", site.message, "--out", str(tmp_path / "no"), *as_rad)
    assert code == 1 and "role radiology may see study, images; this transfer is ehr" in err
    assert _get(site, f"/v1/inbox/{site.message}/files/0", token).status_code == 403

    mine = [e for e in _audit(site) if e.get("user") == user["id"]]
    denied = [e for e in mine if e["event"] == "inbox_fetch" and e["transfer"] == site.message]
    assert denied and all(e["decision"] == "deny" and e["break_glass"] is False for e in denied)
    assert any(
        e["event"] == "inbox_fetch" and e["transfer"] == site.study and e["decision"] == "allow" for e in mine
    )
    assert any(e["event"] == "inbox_list" and e["hidden"] == 1 for e in mine)
    added = [e for e in _audit(site) if e["event"] == "user_added" and e["user"] == user["id"]]
    assert added and added[0]["by"]  # the OS user who ran `qlink user add`

    # Break-glass: the user's own act, with a reason; an alarm in status and on /metrics while it lasts.
    assert _metric(site, "qlink_break_glass_active") == 0.0
    code, out, err = qlink(
        capsys,
        "user",
        "break-glass",
        "--reason",
        "trauma call: prior labs",
        "--minutes",
        str(GLASS_MINUTES),
        *as_rad,
    )
    assert code == 0, err
    assert _metric(site, "qlink_break_glass_active") == 1.0
    assert _metric(site, "qlink_break_glass_grants_total") >= 1.0
    code, status_text, err = qlink(capsys, "status", "--config", site.config_b)
    assert "BREAK-GLASS  user rad" in status_text and "trauma call: prior labs" in status_text, err

    opened = _get(site, f"/v1/inbox/{site.message}/files/0", token)
    assert opened.status_code == 200
    assert opened.content == (DATA / "oru_r01.hl7").read_bytes()
    events = _audit(site)
    (grant,) = [e for e in events if e["event"] == "break_glass" and e["user"] == user["id"]]
    assert grant["reason"] == "trauma call: prior labs" and grant["until"]
    under = [
        e
        for e in events
        if e["event"] == "inbox_fetch" and e["transfer"] == site.message and e["break_glass"]
    ]
    assert under and under[-1]["decision"] == "allow" and under[-1]["file"] == 0

    # Expiry is checked on every request: poll until the message is refused again.
    wait_for(
        lambda: _get(site, f"/v1/inbox/{site.message}", token).status_code == 403,
        "the break-glass grant to expire",
        timeout=120,
    )
    assert _metric(site, "qlink_break_glass_active") == 0.0
    code, status_text, _ = qlink(capsys, "status", "--config", site.config_b)
    assert "BREAK-GLASS" not in status_text


def test_rotation_and_disabling_take_effect_at_the_next_request(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = _add(site, capsys, "reader2", tmp_path / "first.token", "all-data")
    old = (tmp_path / "first.token").read_text().strip()
    assert _get(site, "/v1/inbox", old).status_code == 200
    code, out, err = qlink(
        capsys,
        "user",
        "rotate",
        user["id"],
        "--user-token-out",
        str(tmp_path / "second.token"),
        "--config",
        site.config_b,
    )
    assert code == 0, err
    new = (tmp_path / "second.token").read_text().strip()
    assert _get(site, "/v1/inbox", old).status_code == 401
    assert _get(site, "/v1/inbox", new).status_code == 200

    code, out, err = qlink(capsys, "user", "list", "--json", "--config", site.config_b)
    assert code == 0, err
    assert new not in out and old not in out
    listed = {u["name"]: u for u in json.loads(out)["users"]}
    assert listed["reader2"]["state"] == "active" and listed["reader2"]["roles"] == ["all-data"]

    code, _, err = qlink(capsys, "user", "disable", "reader2", "--config", site.config_b)
    assert code == 0, err
    refused = _get(site, "/v1/inbox", new)
    assert refused.status_code == 403 and refused.json()["message"] == "user reader2 is disabled"
    # Managing users needs the facility token: a user's token cannot add users.
    answer = httpx.post(
        f"{site.b_url}/v1/users",
        json={"name": "x", "roles": ["all-data"], "who": "mallory"},
        headers={"Authorization": f"Bearer {new}"},
        timeout=30,
    )
    assert answer.status_code == 401
    events = [e["event"] for e in _audit(site) if e.get("user") == user["id"]]
    assert "user_rotated" in events and "user_disabled" in events


def test_adding_a_user_with_an_undefined_role_is_a_usage_error(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = qlink(capsys, "user", "add", "nurse1", "--role", "nursing", "--config", site.config_b)
    assert code == 2
    assert "role 'nursing' is not defined (defined: all-data, radiology, mr-only, lab)" in err


def test_roles_limited_by_modality_and_message_type_judge_the_summaries_kept_on_arrival(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mr = (tmp_path / "mr.token", tmp_path / "lab.token")
    _add(site, capsys, "mr-reader", mr[0], "mr-only")
    _add(site, capsys, "lab-reader", mr[1], "lab")
    mr_token, lab_token = (f.read_text().strip() for f in mr)
    # The study is CT (its summary says so): the MR-only role does not see it and is told why.
    listed = _get(site, "/v1/inbox", mr_token).json()
    assert site.study not in [e["transfer_id"] for e in listed["inbox"]] and listed["hidden"] >= 2
    refused = _get(site, f"/v1/inbox/{site.study}/files/0", mr_token)
    assert refused.status_code == 403
    assert "role mr-only may see studies of modality MR; this study is CT" in refused.json()["reasons"]
    # The ORU^R01 message (MSH-9 ORU^R01, with or without its structure) is the lab role's.
    assert [e["transfer_id"] for e in _get(site, "/v1/inbox?kind=ehr", lab_token).json()["inbox"]] == [
        site.message
    ]
    assert _get(site, f"/v1/inbox/{site.message}/files/0", lab_token).status_code == 200
    assert _get(site, f"/v1/inbox/{site.study}/files/0", lab_token).status_code == 403


def test_departments_through_the_cli_and_the_gate_scoring_in_monitor_mode(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`qlink user add --department` and `user assign --department`; the gate (monitor, the default)
    scores the user's first read of the study, audits it with the department, refuses nothing, and
    `qlink status` shows it."""
    token_file = tmp_path / "gated.token"
    code, printed, err = qlink(
        capsys,
        "user",
        "add",
        "gated",
        "--role",
        "radiology",
        "--department",
        "General",
        "--user-token-out",
        str(token_file),
        "--json",
        "--config",
        site.config_b,
    )
    assert code == 0, err
    user = json.loads(printed)["user"]
    assert user["departments"] == ["General"]  # the testbed's [departments] default
    # The facility's [departments] names only General: another name is refused, a miscased one with a hint.
    for name, words in (
        ("Cardiology", "department 'Cardiology' is not one the facility's [departments] can name"),
        ("general", "(did you mean 'General'?)"),
    ):
        code, _, err = qlink(
            capsys, "user", "assign", user["id"], "--department", name, "--config", site.config_b
        )
        assert code == 2 and words in err, err
    code, _, err = qlink(capsys, "user", "assign", user["id"], "--config", site.config_b)
    assert code == 2 and "one of the arguments --patient --department is required" in err

    answer = _get(site, f"/v1/inbox/{site.study}", token_file.read_text().strip())
    assert answer.status_code == 200
    scored = [e for e in _audit(site) if e["event"] == "gate_request" and e["user"] == user["id"]]
    assert len(scored) == 1 and scored[0]["mode"] == "monitor" and scored[0]["applied"] == "allowed"
    assert scored[0]["transfer"] == site.study and 0.0 <= scored[0]["score"] <= 1.0
    assert scored[0]["au"] == 1.0  # the user's first request
    code, status_text, err = qlink(capsys, "status", "--config", site.config_b)
    assert code == 0 and "gate         monitor: step-up from 0.46" in status_text, err
    gate = httpx.get(
        f"{site.b_url}/v1/gate", headers={"Authorization": f"Bearer {site.b_facility_token}"}, timeout=30
    ).json()
    assert gate["mode"] == "monitor" and gate["latency"]["samples"] >= 1 and gate["test_clock"] is False
    clock = httpx.post(
        f"{site.b_url}/v1/gate/clock",
        headers={"Authorization": f"Bearer {site.b_facility_token}"},
        json={"now": 1.0e9, "who": "test"},
        timeout=30,
    )
    assert clock.status_code == 404 and "test clock is off" in clock.json()["message"]
