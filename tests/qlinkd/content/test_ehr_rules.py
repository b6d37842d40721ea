"""HL7 v2 structure by version and trigger event (`content.hl7_structure`, hl7apy's tables) and FHIR
Bundle invariants (`content.fhir_rules`): what used to pass and must not (an "ORU^R01" holding only MSH and
a Z segment, two messages in one file, a transaction Bundle whose entry has no request), what must still
pass (valid messages of several versions and events, Z messages, versions newer than the tables), and
every issue reported, each with its location, severity and code, through a worker process too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from qlinkmed.qlinkd.content import validate
from qlinkmed.qlinkd.content.issues import Issue, IssueCode, Severity, operation_outcome
from qlinkmed.qlinkd.content.worker import INLINE_TEXT_BYTES, ContentValidator
from qlinkmed.qlinkd.errors import ContentError
from tests.paths import DATA

MSH = "MSH|^~\\&|RIS|A|EHR|B|20260101120000||{type}|CTRL1|P|{version}"


def _hl7(message_type: str, version: str, *segments: str) -> bytes:
    return "\r".join([MSH.format(type=message_type, version=version), *segments, ""]).encode()


def _issues(name: str, data: bytes) -> tuple[str, tuple[Issue, ...]]:
    with pytest.raises(ContentError) as caught:
        validate(name, data)
    assert caught.value.name == name
    return caught.value.problem, caught.value.issues


# HL7 v2 -------------------------------------------------------------------------------------------------


def test_an_oru_r01_holding_only_a_z_segment_is_refused() -> None:
    problem, issues = _issues("zzz.hl7", _hl7("ORU^R01", "2.5", "ZZZ|1|anything"))
    assert issues == (
        Issue(
            expression="ORU_R01.PATIENT_RESULT.ORDER_OBSERVATION.OBR",
            diagnostics="required segment OBR missing at the end of the message",
            code=IssueCode.REQUIRED,
        ),
    )
    assert problem == f"HL7 v2 {issues[0]}"


def test_two_messages_in_one_file_are_refused() -> None:
    first = _hl7("ORU^R01", "2.5", "PID|1||1", "OBR|1", "OBX|1|NM|x||1")
    problem, issues = _issues("two.hl7", first + first.replace(b"CTRL1", b"CTRL2"))
    assert [(i.expression, i.code) for i in issues] == [("segments 1, 5 (MSH)", IssueCode.STRUCTURE)]
    assert "the file holds 2 HL7 v2 messages; send each message on its own" in problem


def test_every_structural_problem_is_reported() -> None:
    data = _hl7("ADT^A01", "2.5", "PID|1||1", "QQQ|1", "AL1|1", "ROL|1")
    problem, issues = _issues("adt.hl7", data)
    assert [(i.expression, i.code) for i in issues] == [
        ("ADT_A01.EVN", IssueCode.REQUIRED),
        ("segment 3 (QQQ)", IssueCode.STRUCTURE),
        ("ADT_A01.PV1", IssueCode.REQUIRED),
        ("ADT_A01.PROCEDURE.PR1", IssueCode.REQUIRED),  # after AL1, ROL belongs to a procedure only
    ]
    assert issues[0].diagnostics == "required segment EVN missing before segment 2 (PID)"
    assert issues[2].diagnostics == "required segment PV1 missing before segment 4 (AL1)"
    assert all(i.severity is Severity.ERROR for i in issues)
    assert problem.startswith("HL7 v2 4 issues: ADT_A01.EVN: required segment EVN missing")


def test_header_problems_are_all_reported_together() -> None:
    data = _hl7("ORU^R01", "2.5", "PID|1", "ob|1").replace(b"|CTRL1|", b"||")
    _, issues = _issues("bad.hl7", data)
    assert [i.expression for i in issues] == ["segment 3", "MSH-10"]


@pytest.mark.parametrize(
    ("message_type", "version", "segments"),
    [
        ("ORU^R01", "2.3", ("PID|1", "PV1|1", "ORC|RE", "OBR|1", "NTE|1", "OBX|1", "NTE|2", "OBX|2")),
        ("ORU^R01^ORU_R01", "2.8", ("PID|1", "OBR|1", "OBX|1")),
        ("ORU^R01", "2.5.1", ("PID|1", "ZPI|1", "OBR|1", "OBX|1", "ZOB|1")),
        ("ADT^A01", "2.5", ("EVN|A01", "PID|1", "PV1|1")),
        ("ADT^A04", "2.3", ("EVN|A04", "PID|1", "PV1|1")),
        ("ORM^O01", "2.3", ("PID|1", "ORC|NW", "OBR|1")),
        ("SIU^S14", "2.5", ("SCH|1", "RGS|1")),
        ("ACK", "2.5", ("MSA|AA|CTRL0",)),
        ("ZQR^Z01", "2.5", ("ZQR|1",)),
        ("ORU^R01", "2.9", ("PID|1", "OBR|1", "OBX|1")),
    ],
)
def test_valid_messages_pass(message_type: str, version: str, segments: tuple[str, ...]) -> None:
    info = validate("ok.hl7", _hl7(message_type, version, *segments))
    assert (info.message_type, info.hl7_version) == (message_type, version)


def test_the_sample_and_warm_up_messages_pass() -> None:
    assert validate("oru.hl7", (DATA / "oru_r01.hl7").read_bytes()).message_type == "ORU^R01^ORU_R01"


# FHIR ---------------------------------------------------------------------------------------------------


def _patient(i: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"p{i}", "gender": "female"}


def _transaction(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def test_a_transaction_whose_entries_lack_request_is_refused_naming_each() -> None:
    data = _transaction(
        [
            {"fullUrl": "urn:uuid:1", "resource": _patient(1)},
            {
                "fullUrl": "urn:uuid:2",
                "resource": _patient(2),
                "request": {"method": "POST", "url": "Patient"},
            },
            {"fullUrl": "urn:uuid:3", "resource": _patient(3)},
        ]
    )
    problem, issues = _issues("tx.json", data)
    assert [(i.expression, i.code) for i in issues] == [
        ("Bundle.entry[0].request", IssueCode.INVARIANT),
        ("Bundle.entry[2].request", IssueCode.INVARIANT),
    ]
    assert issues[0].diagnostics == "bdl-3a: each entry of a transaction must have a request"
    assert problem.endswith("(valid as R5 otherwise)")


def test_a_valid_transaction_passes() -> None:
    entry = {
        "fullUrl": "urn:uuid:1",
        "resource": _patient(1),
        "request": {"method": "POST", "url": "Patient"},
    }
    assert validate("tx.json", _transaction([entry])).bundle_entries == 1


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        (
            {"type": "collection", "total": 3, "entry": [{"resource": _patient(1)}]},
            [("Bundle.total", "bdl-1")],
        ),
        (
            {"type": "collection", "entry": [{"resource": _patient(1), "search": {"mode": "match"}}]},
            [("Bundle.entry[0].search", "bdl-2")],
        ),
        (
            {
                "type": "collection",
                "entry": [{"resource": _patient(1), "request": {"method": "GET", "url": "x"}}],
            },
            [("Bundle.entry[0].request", "bdl-3a")],
        ),
        (
            {"type": "transaction-response", "entry": [{"resource": _patient(1)}]},
            [("Bundle.entry[0].response", "bdl-3b")],
        ),
        ({"type": "collection", "entry": [{"fullUrl": "urn:uuid:1"}]}, [("Bundle.entry[0]", "bdl-5")]),
        (
            {
                "type": "collection",
                "entry": [
                    {"fullUrl": "http://x/Patient/1", "resource": _patient(1)},
                    {"fullUrl": "http://x/Patient/1", "resource": _patient(1)},
                ],
            },
            [("Bundle.entry[1].fullUrl", "bdl-7")],
        ),
        (
            {
                "type": "collection",
                "entry": [{"fullUrl": "http://x/Patient/1/_history/2", "resource": _patient(1)}],
            },
            [("Bundle.entry[0].fullUrl", "bdl-8")],
        ),
        (
            {"type": "document", "entry": [{"fullUrl": "urn:uuid:1", "resource": _patient(1)}]},
            [
                ("Bundle.identifier", "bdl-9"),
                ("Bundle.timestamp", "bdl-10"),
                ("Bundle.entry[0].resource", "bdl-11"),
            ],
        ),
        ({"type": "message", "entry": [{"resource": _patient(1)}]}, [("Bundle.entry[0].resource", "bdl-12")]),
    ],
)
def test_each_bundle_invariant(bundle: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    data = json.dumps({"resourceType": "Bundle", **bundle}).encode()
    _, issues = _issues("b.json", data)
    assert [(i.expression, i.diagnostics.split(":")[0]) for i in issues] == expected
    assert all(i.code is IssueCode.INVARIANT for i in issues)


def test_every_element_error_is_reported_with_the_invariants() -> None:
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "birthDate": "1970-13-45", "gender": 3}},
            {"resource": {"resourceType": "Observation", "status": 7}},
        ],
    }
    problem, issues = _issues("bad.json", json.dumps(bad).encode())
    where = [i.expression for i in issues]
    assert "Bundle.entry[0].resource.birthDate" in where
    assert "Bundle.entry[0].resource.gender" in where
    assert "Bundle.entry[1].resource.status" in where
    assert any(
        i.code is IssueCode.REQUIRED and i.expression.startswith("Bundle.entry[1].resource") for i in issues
    )
    assert where[-2:] == ["Bundle.entry[0].request", "Bundle.entry[1].request"]
    assert problem.startswith(f"FHIR {len(issues)} issues: ") and problem.endswith(
        "(R5; also invalid as R4B)"
    )
    assert "1970-13-45" not in problem  # values are never quoted


def test_issues_survive_the_worker_process() -> None:
    # Over INLINE_TEXT_BYTES, so validated in a worker process, not this one.
    filler = [{"fullUrl": f"urn:uuid:{i}", "resource": _patient(i)} for i in range(2000)]
    data = _transaction(filler)
    assert len(data) > INLINE_TEXT_BYTES

    async def scenario() -> tuple[Issue, ...]:
        validator = ContentValidator(workers=1)
        try:
            await validator.start()
            with pytest.raises(ContentError) as caught:
                await validator.validate("big.json", data)
            return caught.value.issues
        finally:
            validator.close()

    issues = asyncio.run(scenario())
    assert len(issues) == 2000
    assert issues[1999] == Issue(
        expression="Bundle.entry[1999].request",
        diagnostics="bdl-3a: each entry of a transaction must have a request",
        code=IssueCode.INVARIANT,
    )


def test_the_issues_make_an_operation_outcome_that_validates() -> None:
    from fhir.resources.operationoutcome import OperationOutcome

    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": _patient(1)}] * 2}
    _, issues = _issues("tx.json", json.dumps(bad).encode())
    outcome = operation_outcome(issues)
    model = OperationOutcome.model_validate(outcome)  # the FHIR model itself judges what we built
    assert [(i.severity, i.code, i.expression) for i in model.issue] == [
        ("error", "invariant", ["Bundle.entry[0].request"]),
        ("error", "invariant", ["Bundle.entry[1].request"]),
    ]
    assert validate("oo.json", json.dumps(outcome).encode()).resource_type == "OperationOutcome"
