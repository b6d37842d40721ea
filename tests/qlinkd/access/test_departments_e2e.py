"""Departments end to end (issue 18): the channel service and two facility daemons as real processes on
loopback. hospital-b's `[departments]` names a study whose DICOM InstitutionalDepartmentName (0008,1040)
is CARDIOLOGY "Cardiology" (rule matched in any case) and a plain CT the testbed's default "General". The
department is recorded on arrival, shown by `qlink inbox list` (text and --json) and filtered by
`--department` and `GET /v1/inbox?department=` (read with httpx, not our client). A user whose role is
limited to Cardiology lists and fetches the cardiology study only; a user limited to Radiology is denied
it with a reason naming both departments; both reads are audited with the user. Waits poll."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import DEFAULT_DEPARTMENT, Deployment
from tests.cli import qlink
from tests.dicom_factory import make_ct_study
from tests.polling import wait_for
from tests.qlinkd.access.test_access_e2e import qlink_plain
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 64_000
DEPARTMENTS = """
[[departments.rule]]
department = "Cardiology"
dicom_department = ["cardiology", "CARDIO"]

[[departments.rule]]
department = "Radiology"
modalities = ["MR"]

[[access.role]]
name = "cardiology"
kinds = ["study", "images"]
departments = ["Cardiology"]

[[access.role]]
name = "radiology"
kinds = ["study", "images"]
departments = ["Radiology"]
"""


@dataclass(frozen=True, slots=True)
class Site:
    deployment: Deployment
    b_url: str
    cardiology: str
    """The study whose objects say (0008,1040) CARDIOLOGY."""
    general: str
    """A CT study naming no department."""

    @property
    def config_b(self) -> str:
        return str(self.deployment.facilities[B])


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


def _with_department(data: bytes, name: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.InstitutionalDepartmentName = name
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def site(module_testbeds: Testbeds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    config_b = deployment.facilities[B]
    config_b.write_text(config_b.read_text() + DEPARTMENTS)
    module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    root = tmp_path_factory.mktemp("studies")
    sent = []
    for name, seed, department in (("cardio", 4, "CARDIOLOGY"), ("plain", 5, None)):
        folder = root / name
        folder.mkdir()
        for i, data in enumerate(make_ct_study(2, 16, 16, seed=seed)):
            (folder / f"im{i}.dcm").write_bytes(
                data if department is None else _with_department(data, department)
            )
        result = qlink_plain(
            "send", "--to", B, str(folder), "--json", "--config", str(deployment.facilities[A])
        )
        assert result["state"] == "delivered", result
        sent.append(result["transfer_id"])
    yield Site(deployment, deployment.local_url(B), *sent)
    a.close()
    b.close()


def _audit(site: Site) -> list[dict[str, Any]]:
    path = site.deployment.root / "state" / B / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _user(site: Site, capsys: pytest.CaptureFixture[str], name: str, role: str, out: Path) -> str:
    code, printed, err = qlink(
        capsys,
        "user",
        "add",
        name,
        "--role",
        role,
        "--user-token-out",
        str(out),
        "--json",
        "--config",
        site.config_b,
    )
    assert code == 0, err
    return str(json.loads(printed)["user"]["id"])


def test_a_cardiology_study_is_listed_read_by_cardiology_and_denied_to_radiology_with_both_named(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cardio_id = _user(site, capsys, "cardio", "cardiology", tmp_path / "cardio.token")
    radio_id = _user(site, capsys, "radio", "radiology", tmp_path / "radio.token")
    as_cardio = ("--user-token-file", str(tmp_path / "cardio.token"), "--config", site.config_b)
    cardio_token = (tmp_path / "cardio.token").read_text().strip()
    radio_token = (tmp_path / "radio.token").read_text().strip()

    # Listed with its department; the General study is hidden from a Cardiology-only role.
    code, out, err = qlink(capsys, "inbox", "list", "--json", *as_cardio)
    assert code == 0, err
    listing = json.loads(out)
    assert [(e["transfer_id"], e["department"]) for e in listing["inbox"]] == [
        (site.cardiology, "Cardiology")
    ]
    assert listing["hidden"] == 1
    code, out, err = qlink(capsys, "inbox", "list", *as_cardio)
    assert code == 0, err
    head, row = out.splitlines()[1:3]  # ARRIVED is two words: "12-07 02:15"
    assert (
        head.split()[3] == "DEPT" and row.split()[4] == "Cardiology" and row.startswith(site.cardiology[:8])
    )

    # The filter, through our CLI and over HTTP with httpx: exact, any case.
    code, out, err = qlink(capsys, "inbox", "list", "--json", "--department", "CARDIOLOGY", *as_cardio)
    assert code == 0 and [e["transfer_id"] for e in json.loads(out)["inbox"]] == [site.cardiology], err
    headers = {"Authorization": f"Bearer {cardio_token}"}
    found = httpx.get(
        f"{site.b_url}/v1/inbox", params={"department": "cardiology"}, headers=headers, timeout=30
    )
    assert found.status_code == 200 and [e["transfer_id"] for e in found.json()["inbox"]] == [site.cardiology]
    # The General study exists (a Cardiology user cannot see it: filtered and hidden by the policy).
    general = httpx.get(
        f"{site.b_url}/v1/inbox", params={"department": DEFAULT_DEPARTMENT}, headers=headers, timeout=30
    ).json()
    assert general["inbox"] == [] and general["hidden"] == 1
    bad = httpx.get(f"{site.b_url}/v1/inbox", params={"department": ""}, headers=headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["field"] == "department"

    # Cardiology reads it.
    code, _, err = qlink(
        capsys, "inbox", "fetch", site.cardiology, "--out", str(tmp_path / "got"), *as_cardio
    )
    assert code == 0, err
    assert len(list((tmp_path / "got" / site.cardiology).iterdir())) == 2

    # Radiology is denied, told why, naming both departments.
    reason = "role radiology may see data for Radiology; this study is for Cardiology"
    refused = httpx.get(
        f"{site.b_url}/v1/inbox/{site.cardiology}/files/0",
        headers={"Authorization": f"Bearer {radio_token}"},
        timeout=30,
    )
    assert refused.status_code == 403 and refused.json()["reasons"] == [reason]
    as_radio = ("--user-token-file", str(tmp_path / "radio.token"), "--config", site.config_b)
    code, _, err = qlink(capsys, "inbox", "fetch", site.cardiology, "--out", str(tmp_path / "no"), *as_radio)
    assert code == 1 and reason in err
    assert not (tmp_path / "no" / site.cardiology).exists()

    # Both audited, with the user.
    reads = [e for e in _audit(site) if e["event"] == "inbox_fetch" and e["transfer"] == site.cardiology]
    assert any(e["user"] == cardio_id and e["decision"] == "allow" for e in reads)
    denied = [e for e in reads if e["user"] == radio_id]
    assert denied and all(e["decision"] == "deny" and e["reasons"] == [reason] for e in denied)
