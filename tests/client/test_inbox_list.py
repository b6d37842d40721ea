"""`qlink inbox list` without a daemon: the text table stays within 100 columns whatever the peer wrote
(long names cut with "…", the patient ID kept), and a bad filter exits 2 naming its option before any
request is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.client.commands.inbox import cut, format_inbox
from tests.cli import qlink


def _row(**fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "transfer_id": "0123abcd-0000-4000-8000-000000000000",
        "from": "hospital-with-a-long-name",
        "kind": "study",
        "files": 300,
        "bytes": 1 << 30,
        "state": "delivered",
        "received_bytes": 1 << 30,
        "started_at": 1_780_000_000.0,
        "delivered_at": 1_780_000_100.0,
        "fetched_at": None,
        "purged_at": None,
        "patient_name": "Wolfeschlegelsteinhausenbergerdorff, Hubert Blaine",
        "patient_id": "PID-000000123456",
        "accession": "ACC-2024-000001234",
        "modalities": ["CT", "PR", "SR"],
        "study_date": "2024-06-04",
        "study_description": "CT THORAX ABDOMEN PELVIS WITH CONTRAST",
        "instances": 1234,
        "message_type": None,
        "sender": None,
    }
    row.update(fields)
    return row


def test_the_table_fits_100_columns_and_keeps_the_patient_id() -> None:
    rows = [
        _row(),
        _row(state="receiving", received_bytes=1 << 29, delivered_at=None),
        _row(fetched_at=1_780_000_200.0),
        _row(purged_at=1_780_000_300.0, purge_reason="fetched"),
        _row(
            kind="ehr",
            files=1,
            message_type="ORU^R01^ORU_R01",
            sender="A-VERY-LONG-SENDING-APPLICATION@A VERY LONG FACILITY NAME",
            accession=None,
            instances=None,
        ),
        _row(patient_name="山田, 太郎", patient_id=None, kind="images", accession=None),
    ]
    text = format_inbox({"facility": "hospital-b", "inbox": rows})
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(len(line) <= 100 for line in lines), "\n".join(lines)
    assert lines[1].split() == ["ID", "ARRIVED", "FROM", "PATIENT", "ACCESSION", "DETAIL", "N", "STATE"]
    assert "Wolf… (PID-000000123456)" in lines[2]
    long_id = format_inbox({"facility": "b", "inbox": [_row(patient_id="X" * 40)]}).splitlines()[2]
    assert "Wolfe… (XXXXXXXXXXXXXX…)" in long_id
    assert lines[2].rstrip().endswith("1234 new")
    assert lines[3].rstrip().endswith("rcv 50%")
    assert lines[4].rstrip().endswith("fetched") and lines[5].rstrip().endswith("purged")
    assert "ORU^R01 from A-VERY-LONG" in lines[6] and lines[6].rstrip().endswith("1 new")
    assert "山田, 太郎" in lines[7]


def test_a_dept_column_appears_when_a_row_names_a_department_and_the_table_still_fits() -> None:
    rows = [
        _row(department="Paediatric cardiology"),
        _row(department=None),
        _row(
            kind="ehr",
            files=1,
            message_type="ORU^R01^ORU_R01",
            sender="LAB@HOSP",
            accession=None,
            department="Laboratory",
        ),
    ]
    lines = format_inbox({"facility": "hospital-b", "inbox": rows}).splitlines()
    assert all(len(line) <= 100 for line in lines), "\n".join(lines)
    assert lines[1].split() == [
        "ID",
        "ARRIVED",
        "FROM",
        "DEPT",
        "PATIENT",
        "ACCESSION",
        "DETAIL",
        "N",
        "STATE",
    ]
    assert lines[2].split()[4] == "Paediatri…"
    assert lines[3].split()[4] == "-"
    assert "Laboratory" in lines[4] and "ORU^R01 from LAB@HOSP" in lines[4]
    assert all(line.rstrip().endswith(("1234 new", "1 new")) for line in lines[2:])
    # No row names one (a facility without [departments]): no DEPT column.
    plain = format_inbox({"facility": "hospital-b", "inbox": [_row(department=None)]}).splitlines()
    assert "DEPT" not in plain[1]


def test_an_empty_listing_says_so() -> None:
    assert format_inbox({"facility": "hospital-b", "inbox": []}) == "inbox of hospital-b: nothing matches"


def test_cut_keeps_short_text_and_marks_what_it_cuts() -> None:
    assert cut("CT", 5) == "CT"
    assert cut("ABCDEFGH", 5) == "ABCD…"
    assert cut("two\n lines", 20) == "two lines"
    assert cut(None, 5) == cut("", 5) == "-"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--since", "yesterday"),
        ("--until", "2026-02-30"),
        ("--limit", "0"),
        ("--kind", "dicom"),
        ("--modality", "C T"),
        ("--patient", ""),
        ("--department", " "),
    ],
)
def test_a_bad_filter_exits_2_naming_its_option_before_any_request(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 43)
    # Port 9 (discard) on loopback: nothing answers there, so reaching it would be "cannot reach qlinkd".
    code, out, err = qlink(
        capsys, "inbox", "list", option, value, "--url", "http://127.0.0.1:9", "--user-token-file", str(token)
    )
    assert code == 2, err
    assert f"qlink inbox list: error: {option}:" in err
    assert "reach" not in err and out == ""
