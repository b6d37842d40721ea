"""`qlink demo` end to end, run in-process as a user runs it (it starts and stops its own channel service
and daemons, and the hospital systems around them): the hospital's path (a pynetdicom modality's C-STORE
at hospital-a arriving bit-exact at hospital-b's PACS, an HL7 ADT message ACKed AA by hospital-a over MLLP
and arriving at hospital-b's interface engine, whose ACK hospital-b records), the local API's study and EHR
messages, and with --eve the same sends accepted at hospital-a and nothing reaching hospital-b."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.commands.demo import ADT_CONTROL_ID, EHR_REPEATS, format_summary, study_entries
from tests.cli import qlink


def _demo(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> dict[str, Any]:
    code, out, err = qlink(capsys, "demo", "--json", "--keep", str(root), *flags)
    summary: dict[str, Any] = json.loads(out)
    assert code == 0, (summary, err)
    for log in root.glob("*.log"):
        assert "Traceback" not in log.read_text(), f"{log.name}:\n{log.read_text()[-3000:]}"
    return summary


def test_the_demo_shows_the_hospital_path_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = _demo(capsys, tmp_path / "demo")
    assert summary["ok"] is True and summary["eve"] is False
    instances = len(study_entries())
    dicom = summary["dicom_gateway"]
    assert (dicom["instances"], dicom["success"], dicom["statuses"]) == (instances, instances, ["0x0000"])
    assert dicom["bit_exact"] is True
    assert (dicom["scp_ae_title"], dicom["called_ae"], dicom["pacs_ae_title"]) == (
        "QLINK_HOSPITAL_A",
        "TO_HOSPITAL_B",
        "PACS_HOSPITAL_B",
    )
    assert 0 < dicom["stored_at_a_ms"] <= dicom["at_pacs_ms"]
    hl7 = summary["hl7_gateway"]
    assert (hl7["ack"], hl7["ack_control_id"], hl7["identical"]) == ("AA", ADT_CONTROL_ID, True)
    assert 0 < hl7["acked_ms"] <= hl7["at_engine_ms"] <= hl7["engine_ack_recorded_ms"]
    # hospital-b forwards the local API's EHR messages as well: the ORU messages with the ADT to the
    # engine, the FHIR Bundles to the FHIR server.
    assert summary["forwarded"] == {"engine_hl7": 1 + EHR_REPEATS // 2, "fhir_server": EHR_REPEATS // 2}
    assert summary["study"]["bit_exact"] is True and summary["ehr"]["bit_exact"] is True
    text = format_summary(summary)
    assert "DICOM gateway   modality DEMO_MR01 -> QLINK_HOSPITAL_A (called TO_HOSPITAL_B)" in text
    assert "ACK AA from hospital-a" in text and "bit-exact: True" in text


def test_with_eve_the_hospital_sends_are_accepted_and_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = _demo(capsys, tmp_path / "demo", "--eve")
    assert summary["ok"] is True and summary["eve"] is True
    instances = len(study_entries())
    dicom, hl7 = summary["dicom_gateway"], summary["hl7_gateway"]
    # Durable at hospital-a, so answered success; nothing at hospital-b.
    assert (dicom["success"], dicom["at_pacs"]) == (instances, 0)
    assert (hl7["ack"], hl7["at_engine"]) == ("AA", 0)
    assert summary["queued_at_a"] == 3 and summary["inbox_at_b"] == 0
    assert "0 at hospital-b's PACS" in format_summary(summary)
