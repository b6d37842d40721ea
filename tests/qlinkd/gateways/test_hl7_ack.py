"""HL7 ACKs: original and enhanced mode, MSA-2 the message's control ID, ERR by version, the message's own
encoding characters; each ACK read back by independent parsers (hl7apy and python-hl7)."""

from __future__ import annotations

import hl7
import pytest
from hl7apy.core import Message
from hl7apy.parser import parse_message

from qlinkmed.qlinkd.errors import ContentError
from qlinkmed.qlinkd.gateways.hl7_ack import (
    AckCode,
    Header,
    Hl7Error,
    Outcome,
    Problem,
    ack_code,
    build_ack,
    escape,
    parse_ack,
    parse_header,
    problem_of,
)
from tests.paths import DATA

ORU = (DATA / "oru_r01.hl7").read_bytes()
ADT_25 = (
    b"MSH|^~\\&|ADT1|HOSP_A|LAB|HOSP_B|20240101120000||ADT^A01^ADT_A01|MSG00001|P|2.5\r"
    b"EVN|A01|20240101\rPID|1||123\r"
)
ADT_23 = (
    b"MSH|^~\\&|ADT1|HOSP_A|LAB|HOSP_B|20240101120000||ADT^A01|MSG00002|P|2.3\rEVN|A01|20240101\rPID|1||123\r"
)
STAMP = "20260101120000"


def ack(data: bytes, outcome: Outcome, problem: Problem | None = None) -> bytes:
    return build_ack(parse_header(data), outcome, control_id="ACK1", timestamp=STAMP, problem=problem)


def hl7apy_parse(data: bytes) -> Message:
    return parse_message(data.decode().replace("\n", "\r"), find_groups=False)


def test_header_fields() -> None:
    h = parse_header(ADT_25)
    assert h is not None
    assert (h.sending_application, h.sending_facility) == ("ADT1", "HOSP_A")
    assert (h.receiving_application, h.receiving_facility) == ("LAB", "HOSP_B")
    assert (h.message_type, h.trigger, h.control_id, h.version) == (
        "ADT^A01^ADT_A01",
        "A01",
        "MSG00001",
        "2.5",
    )
    assert not h.enhanced


def test_header_of_garbage_is_none() -> None:
    assert parse_header(b"") is None
    assert parse_header(b"PID|1||123\r") is None
    assert parse_header(b"MSH") is None
    assert parse_header(b"MSHa^~\\&|x") is None  # an alphanumeric field separator


def test_original_mode_accept_is_aa_with_the_control_id() -> None:
    out = ack(ADT_25, Outcome.ACCEPT)
    assert out.split(b"\r")[1] == b"MSA|AA|MSG00001"
    parsed = hl7.parse(out.decode())
    assert str(parsed.segment("MSH")[9]) == "ACK^A01^ACK"
    # Sender and receiver swapped.
    assert [str(parsed.segment("MSH")[i]) for i in (3, 4, 5, 6)] == ["LAB", "HOSP_B", "ADT1", "HOSP_A"]
    assert str(parsed.segment("MSH")[12]) == "2.5"
    msg = hl7apy_parse(out)
    assert msg.msa.msa_1.value == "AA"
    assert msg.msa.msa_2.value == "MSG00001"
    assert msg.msh.msh_9.to_er7() == "ACK^A01^ACK"


def test_error_in_v25_has_err3_from_table_0357_and_the_text_in_err8() -> None:
    problem = Problem(code=Hl7Error.REQUIRED_FIELD_MISSING, text="PID-3 is empty", location=("PID", 1, 3))
    out = ack(ADT_25, Outcome.ERROR, problem)
    msg = hl7apy_parse(out)
    assert msg.msa.msa_1.value == "AE"
    assert msg.msa.msa_2.value == "MSG00001"
    assert msg.err.err_3.to_er7() == "101^Required field missing^HL70357"
    assert msg.err.err_2.to_er7() == "PID^1^3"
    assert msg.err.err_4.value == "E"
    assert msg.err.err_8.value == "PID-3 is empty"


def test_error_before_v25_uses_err1_and_msa3() -> None:
    problem = Problem(code=Hl7Error.UNSUPPORTED_MESSAGE_TYPE, text="no route", location=("MSH", 1, 9))
    out = ack(ADT_23, Outcome.REJECT, problem)
    segments = out.split(b"\r")
    assert segments[0].split(b"|")[8] == b"ACK^A01"  # v2.3: no message structure component
    assert segments[1] == b"MSA|AR|MSG00002|no route"
    assert segments[2] == b"ERR|MSH^1^9^200&Unsupported message type&HL70357"
    parsed = hl7.parse(out.decode())
    assert str(parsed.segment("MSA")[1]) == "AR"


def test_enhanced_mode_asks_for_commit_acks() -> None:
    h = parse_header(ORU)  # MSH-15 AL, MSH-16 NE
    assert h is not None and h.enhanced
    assert ack_code(h, Outcome.ACCEPT) is AckCode.CA
    assert ack_code(h, Outcome.ERROR) is AckCode.CE
    assert ack_code(h, Outcome.REJECT) is AckCode.CR
    out = ack(ORU, Outcome.ACCEPT)
    assert out.split(b"\r")[1] == b"MSA|CA|QLT00001"
    # MSH-18 is carried over: the ACK is in the message's character set.
    assert hl7apy_parse(out).msh.msh_18.value == "UNICODE UTF-8"


@pytest.mark.parametrize(
    ("msh15", "accept", "error"),
    [("AL", AckCode.CA, AckCode.CE), ("NE", None, None), ("ER", None, AckCode.CE), ("SU", AckCode.CA, None)],
)
def test_msh15_conditions(msh15: str, accept: AckCode | None, error: AckCode | None) -> None:
    h = Header(accept_ack=msh15, application_ack="AL")
    assert ack_code(h, Outcome.ACCEPT) is accept
    assert ack_code(h, Outcome.ERROR) is error


def test_msh16_alone_is_enhanced_with_commit_acks_always() -> None:
    h = Header(application_ack="AL")
    assert ack_code(h, Outcome.ACCEPT) is AckCode.CA


def test_other_encoding_characters_are_kept() -> None:
    message = b"MSH#@~$%#SND#FA#RCV#FB#20240101##ADT@A04#C1#P#2.5\rPID#1\r"
    problem = Problem(code=Hl7Error.DATA_TYPE, text="bad # and @ and $ in it")
    out = ack(message, Outcome.ERROR, problem)
    lines = out.split(b"\r")
    assert lines[0].startswith(b"MSH#@~$%#RCV#FB#SND#FA#")
    assert b"#ACK@A04@ACK#" in lines[0]
    assert lines[1] == b"MSA#AE#C1"
    # The text's separators are escaped with the message's escape character.
    assert b"bad $F$ and $S$ and $E$ in it" in lines[2]


def test_escape_removes_line_ends_and_escapes_separators() -> None:
    assert escape("a|b^c~d\\e&f\rg\nh", Header()) == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g h"


def test_no_usable_header_gets_a_default_ack_with_empty_msa2() -> None:
    out = build_ack(
        None,
        Outcome.REJECT,
        control_id="X",
        timestamp=STAMP,
        problem=Problem(code=Hl7Error.SEGMENT_SEQUENCE, text="no MSH segment"),
    )
    msg = hl7apy_parse(out)
    assert msg.msa.msa_1.value == "AR"
    assert msg.msa.msa_2.value == ""
    assert msg.err.err_3.to_er7().startswith("100^")


@pytest.mark.parametrize(
    ("problem", "code"),
    [
        ("HL7 v2 message has no MSH segment", Hl7Error.SEGMENT_SEQUENCE),
        ("HL7 v2 MSH-10 (message control ID) is empty", Hl7Error.REQUIRED_FIELD_MISSING),
        ("HL7 v2 MSH-12 (version ID) is missing or not a 2.x version", Hl7Error.UNSUPPORTED_VERSION_ID),
        ("HL7 v2 MSH-9 (message type) is empty", Hl7Error.UNSUPPORTED_MESSAGE_TYPE),
        ("HL7 v2 message has no segment after MSH", Hl7Error.REQUIRED_FIELD_MISSING),
        ("something else entirely", Hl7Error.DATA_TYPE),
    ],
)
def test_problem_of_content_error(problem: str, code: Hl7Error) -> None:
    assert problem_of(ContentError("m.hl7", problem)).code is code


def test_parse_ack_reads_code_control_id_and_error_text() -> None:
    problem = Problem(code=Hl7Error.APPLICATION_INTERNAL_ERROR, text="disk full")
    reply = parse_ack(ack(ADT_23, Outcome.ERROR, problem))
    assert (reply.code, reply.control_id) == ("AE", "MSG00002")
    assert "disk full" in reply.text
    reply = parse_ack(ack(ADT_25, Outcome.ACCEPT))
    assert (reply.code, reply.control_id, reply.text) == ("AA", "MSG00001", "")


def test_parse_ack_refuses_what_is_no_ack() -> None:
    with pytest.raises(ContentError, match="no MSA"):
        parse_ack(ADT_25)
    with pytest.raises(ContentError, match="no MSH"):
        parse_ack(b"garbage")


def test_ack_of_an_independent_library_is_read() -> None:
    # python-hl7 builds its own ACKs: ours must read them.
    theirs = str(hl7.parse(ADT_25.decode()).create_ack(ack_code="AR", message_id="Z1")).encode()
    reply = parse_ack(theirs)
    assert (reply.code, reply.control_id) == ("AR", "MSG00001")
