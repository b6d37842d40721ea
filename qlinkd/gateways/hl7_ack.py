"""HL7 v2 acknowledgements, pure: read the header fields an ACK needs from a message (however broken the
rest of it is), decide which acknowledgement the message asked for, and build it; read the ACK a
destination sends back.

Original mode (MSH-15 and MSH-16 both empty): every message is answered AA (accepted: durable at this
facility), AE (error in the message: the sender should correct it) or AR (rejected: unknown destination,
unsupported type or version, too large). Enhanced mode (either is valued): MSH-15 says when a commit ACK is
wanted (AL always, NE never, ER only on error, SU only on success; empty counts as AL) and it is CA, CE
or CR. MSH-16 (application acknowledgement) is not answered here: qlink stores and forwards, and the
application that processes the message is the receiving facility's interface engine; its acknowledgement
ends at qlink's forwarder (which treats AA/CA as delivered). The message goes on unchanged, MSH-15 and
MSH-16 included.

The ACK is written in the message's version and encoding characters: MSH with sender and receiver
swapped, MSH-9 ACK^<trigger>^ACK (ACK^<trigger> before v2.3.1, which has no message structure
component), MSA-1 the code, MSA-2 the message's MSH-10, and for an error an ERR segment with the HL7 error
code from table 0357 (ERR-3 and the text in ERR-8 from v2.5; ERR-1 as segment^sequence^field^code before
v2.5, with the text in MSA-3 too).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from qlinkmed.qlinkd.errors import ContentError

DEFAULT_ENCODING = "^~\\&"
DEFAULT_VERSION = "2.5"
TEXT_CHARS = 200
"""Error text in an ACK is cut to this length (it may quote the message)."""


class Hl7Error(enum.IntEnum):
    """HL7 table 0357, message error condition codes."""

    ACCEPTED = 0
    SEGMENT_SEQUENCE = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


_ERROR_TEXT = {
    Hl7Error.ACCEPTED: "Message accepted",
    Hl7Error.SEGMENT_SEQUENCE: "Segment sequence error",
    Hl7Error.REQUIRED_FIELD_MISSING: "Required field missing",
    Hl7Error.DATA_TYPE: "Data type error",
    Hl7Error.TABLE_VALUE_NOT_FOUND: "Table value not found",
    Hl7Error.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    Hl7Error.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    Hl7Error.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    Hl7Error.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    Hl7Error.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    Hl7Error.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    Hl7Error.APPLICATION_RECORD_LOCKED: "Application record locked",
    Hl7Error.APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class Outcome(enum.Enum):
    ACCEPT = "accept"
    """Durable at this facility (AA / CA)."""
    ERROR = "error"
    """Not taken: the sender should correct the message, or try again later (AE / CE)."""
    REJECT = "reject"
    """Not taken and never will be as it is (AR / CR)."""


class AckCode(enum.StrEnum):
    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"


_ORIGINAL = {Outcome.ACCEPT: AckCode.AA, Outcome.ERROR: AckCode.AE, Outcome.REJECT: AckCode.AR}
_COMMIT = {Outcome.ACCEPT: AckCode.CA, Outcome.ERROR: AckCode.CE, Outcome.REJECT: AckCode.CR}


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """Why a message was not accepted, as the ERR segment says it."""

    code: Hl7Error
    text: str
    """What is wrong, for a person (never patient data beyond what the sender sent us)."""
    location: tuple[str, int, int] | None = None
    """(segment ID, segment sequence, field position), e.g. ("MSH", 1, 9)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The MSH fields an ACK and routing need, raw (still escaped) as the message gave them."""

    field_separator: str = "|"
    encoding: str = DEFAULT_ENCODING
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    accept_ack: str = ""
    application_ack: str = ""
    charset: str = ""

    @property
    def trigger(self) -> str:
        parts = self.message_type.split(self.encoding[0])
        return parts[1] if len(parts) > 1 else ""

    @property
    def enhanced(self) -> bool:
        return bool(self.accept_ack or self.application_ack)

    def component(self, raw: str) -> str:
        """The first component of a field (an HD's namespace ID, a message type's code)."""
        return raw.split(self.encoding[0], maxsplit=1)[0]


_VERSION = re.compile(r"2\.\d+(\.\d+)?")


def version_tuple(version: str) -> tuple[int, ...]:
    """(2, 5, 1) for "2.5.1"; the default version's for anything that is no 2.x version."""
    text = version if _VERSION.fullmatch(version) else DEFAULT_VERSION
    return tuple(int(p) for p in text.split("."))


def decode_text(data: bytes) -> str:
    """The message as text: UTF-8 if it is valid UTF-8, else ISO 8859-1 (every byte is a character)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def segments(text: str) -> list[str]:
    """Segments split at CR (LF and CRLF tolerated), empty lines dropped."""
    return [s for s in re.split(r"\r\n|\r|\n", text) if s]


def parse_header(data: bytes) -> Header | None:
    """The header of a message, or None if it does not start with a usable MSH segment (an ACK is then
    built with the defaults and an empty MSA-2)."""
    text = decode_text(data).lstrip("\r\n \t")
    first = segments(text[:65536])[:1]
    if not first or not first[0].startswith("MSH") or len(first[0]) < 8:
        return None
    msh = first[0]
    separator, encoding = msh[3], msh[4:8]
    if separator.isalnum() or len(set(encoding + separator)) != 5 or any(c.isalnum() for c in encoding):
        return None
    fields = msh.split(separator)

    def field(n: int) -> str:  # MSH-n: MSH-1 is the separator itself, so MSH-n is fields[n - 1]
        return fields[n - 1] if len(fields) >= n else ""

    return Header(
        field_separator=separator,
        encoding=encoding,
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        message_type=field(9),
        control_id=field(10),
        processing_id=field(11),
        version=field(12).split(encoding[0])[0],
        accept_ack=field(15),
        application_ack=field(16),
        charset=field(18),
    )


def ack_code(header: Header, outcome: Outcome) -> AckCode | None:
    """The acknowledgement the message asked for, or None if it asked for none in this case (enhanced
    mode: MSH-15 NE, ER on success, SU on error)."""
    if not header.enhanced:
        return _ORIGINAL[outcome]
    wanted = header.component(header.accept_ack).upper() or "AL"
    if wanted == "NE" or (wanted == "ER" and outcome is Outcome.ACCEPT):
        return None
    if wanted == "SU" and outcome is not Outcome.ACCEPT:
        return None
    return _COMMIT[outcome]


def escape(text: str, header: Header) -> str:
    """`text` made safe for one field: separators replaced by HL7 escape sequences, line ends by spaces."""
    comp, rep, esc, sub = tuple(header.encoding)
    text = " ".join(text.split())[:TEXT_CHARS]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((header.field_separator, "F"), (comp, "S"), (rep, "R"), (sub, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out


def build_ack(
    header: Header | None,
    outcome: Outcome,
    *,
    control_id: str,
    timestamp: str,
    problem: Problem | None = None,
    code: AckCode | None = None,
) -> bytes:
    """The ACK for a message with `header` (None: no usable MSH). `control_id` is the ACK's own MSH-10,
    `timestamp` its MSH-7 (YYYYMMDDHHMMSS). `code` overrides the one `ack_code` picks (which the caller has
    usually asked already, to learn whether to answer at all)."""
    h = header or Header()
    code = code or ack_code(h, outcome) or _ORIGINAL[outcome]
    version = h.version if _VERSION.fullmatch(h.version) else DEFAULT_VERSION
    vt = version_tuple(version)
    f, comp, sub = h.field_separator, h.encoding[0], h.encoding[3]
    trigger = h.trigger
    message_type = f"ACK{comp}{trigger}{comp}ACK" if vt >= (2, 3, 1) else f"ACK{comp}{trigger}"
    msh = [
        "MSH",
        h.encoding,
        h.receiving_application,
        h.receiving_facility,
        h.sending_application,
        h.sending_facility,
        timestamp,
        "",
        message_type,
        escape(control_id, h),
        h.processing_id or "P",
        version,
    ]
    if h.charset:
        msh += ["", "", "", "", "", h.charset]
    msa = ["MSA", code.value, h.control_id]
    out = [f.join(msh)]
    if problem is not None and outcome is not Outcome.ACCEPT:
        text = escape(problem.text, h)
        label = escape(_ERROR_TEXT[problem.code], h)
        where = problem.location or ("", 0, 0)
        if vt >= (2, 5):
            location = comp.join((where[0], str(where[1]), str(where[2]))) if problem.location else ""
            err = ["ERR", "", location, comp.join((str(int(problem.code)), label, "HL70357")), "E"]
            err += ["", "", "", text]
        else:
            msa.append(text)
            eld = comp.join(
                (
                    where[0],
                    str(where[1]) if problem.location else "",
                    str(where[2]) if problem.location else "",
                    sub.join((str(int(problem.code)), label, "HL70357")),
                )
            )
            err = ["ERR", eld]
        out += [f.join(msa), f.join(err)]
    else:
        out.append(f.join(msa))
    text = "\r".join(out) + "\r"
    try:
        return text.encode("utf-8" if "UTF" in h.charset.upper() or not h.charset else "latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


# ---- the reason a message is refused, from the content validator's words


_RULES: tuple[tuple[re.Pattern[str], Hl7Error, tuple[str, int, int] | None], ...] = (
    (re.compile(r"no MSH segment|segment sequence|segment order|unexpected segment|segment \d+", re.I),
     Hl7Error.SEGMENT_SEQUENCE, None),
    (re.compile(r"MSH-12|version", re.I), Hl7Error.UNSUPPORTED_VERSION_ID, ("MSH", 1, 12)),
    (re.compile(r"MSH-9|message type|structure|trigger", re.I), Hl7Error.UNSUPPORTED_MESSAGE_TYPE,
     ("MSH", 1, 9)),
    (re.compile(r"MSH-10", re.I), Hl7Error.REQUIRED_FIELD_MISSING, ("MSH", 1, 10)),
    (re.compile(r"required|missing|is empty|no segment after", re.I), Hl7Error.REQUIRED_FIELD_MISSING, None),
    (re.compile(r"MSH-1\b|MSH-2\b|separator|encoding", re.I), Hl7Error.DATA_TYPE, ("MSH", 1, 2)),
)  # fmt: skip


def problem_of(error: ContentError) -> Problem:
    """The ERR an HL7 message refused by the content rules gets: the table 0357 code its problem names
    (segment sequence, required field, message type, version), else a data type error."""
    for pattern, code, location in _RULES:
        if pattern.search(error.problem):
            return Problem(code=code, text=error.problem, location=location)
    return Problem(code=Hl7Error.DATA_TYPE, text=error.problem)


# ---- the ACK a destination answers with


@dataclass(frozen=True, slots=True)
class AckReply:
    code: str
    """MSA-1 as sent (AA, AE, AR, CA, CE, CR, or whatever the destination wrote)."""
    control_id: str
    """MSA-2: the MSH-10 of the message it acknowledges."""
    text: str
    """MSA-3 and ERR text, for the ledger's last error."""


def parse_ack(data: bytes) -> AckReply:
    """Read an ACK; ContentError if it is none (no MSH, no MSA)."""
    header = parse_header(data)
    if header is None:
        raise ContentError("ACK", "the answer has no MSH segment")
    f = header.field_separator
    msa: list[str] | None = None
    notes: list[str] = []
    for segment in segments(decode_text(data))[1:]:
        fields = segment.split(f)
        if fields[0] == "MSA" and msa is None:
            msa = fields
        elif fields[0] == "ERR":
            notes.append(f.join(fields[1:]))
    if msa is None or len(msa) < 2:
        raise ContentError("ACK", "the answer has no MSA segment")
    if len(msa) > 3 and msa[3]:
        notes.insert(0, msa[3])
    return AckReply(
        code=msa[1].strip().upper(), control_id=msa[2] if len(msa) > 2 else "", text="; ".join(notes)[:500]
    )
