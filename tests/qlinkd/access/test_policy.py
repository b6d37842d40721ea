"""The access policy, dimension by dimension: each limit a role places allows what it lists and refuses
the rest with a reason in plain words; a disabled user reads nothing; break-glass allows what the roles
refuse, says so, and ends at its time (the clock is an argument)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from qlinkmed.qlinkd.access.config import PatientScope, Role
from qlinkmed.qlinkd.access.policy import DataAttributes, Decision, User, UserState, decide
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind

STUDY, IMAGES, EHR = TransferKind.STUDY, TransferKind.IMAGES, TransferKind.EHR
NOW = 1_000_000.0


def user(*roles: str, **changes: object) -> User:
    base = User(id="u-1", name="alice", roles=roles, state=UserState.ACTIVE, created_at=0.0, rotated_at=0.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]  # test-only field overrides


def data(kind: TransferKind = STUDY, **changes: object) -> DataAttributes:
    base = DataAttributes(transfer_id="t-1", kind=kind, peer="hospital-a")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


RADIOLOGY = Role(name="radiology", kinds=(STUDY, IMAGES), peers=("hospital-a",), modalities=("CT", "MR"))
LAB = Role(name="lab", kinds=(EHR,), message_types=("ORU^R01",))
WARD = Role(name="ward", kinds=(STUDY, EHR), departments=("cardiology",), patients=PatientScope.ASSIGNED)
ROLES = {r.name: r for r in (RADIOLOGY, LAB, WARD)}

CASES = [
    # (roles held, data, allowed, the reason)
    (("radiology",), data(modalities=("CT",)), True, "role radiology allows this study from hospital-a"),
    (
        ("radiology",),
        data(EHR, message_type="ORU^R01"),
        False,
        "role radiology may see study, images; this transfer is ehr",
    ),
    (
        ("radiology",),
        data(peer="hospital-c", modalities=("CT",)),
        False,
        "role radiology may see data from hospital-a; this study came from hospital-c",
    ),
    (
        ("radiology",),
        data(modalities=("US",)),
        False,
        "role radiology may see studies of modality CT, MR; this study is US",
    ),
    (
        ("radiology",),
        data(modalities=("CT", "US")),
        False,
        "role radiology may see studies of modality CT, MR; this study is CT, US",
    ),
    (
        ("radiology",),
        data(),
        False,
        "role radiology may see studies of modality CT, MR; this study's modality is not recorded",
    ),
    # Modalities limit studies only: an image set passes.
    (("radiology",), data(IMAGES), True, "role radiology allows this image set from hospital-a"),
    (("lab",), data(EHR, message_type="ORU^R01"), True, "role lab allows this message from hospital-a"),
    (
        ("lab",),
        data(EHR, message_type="ADT^A01"),
        False,
        "role lab may see messages of type ORU^R01; this message is ADT^A01",
    ),
    (
        ("lab",),
        data(EHR),
        False,
        "role lab may see messages of type ORU^R01; this message's type is not recorded",
    ),
    (
        ("ward",),
        data(department="oncology", patient_id="P1"),
        False,
        "role ward may see data for cardiology; this study is for oncology",
    ),
    (
        ("ward",),
        data(patient_id="P1"),
        False,
        "role ward may see data for cardiology; this study names no department",
    ),
    (
        ("ward",),
        data(department="cardiology", patient_id="P2"),
        False,
        "role ward may see only patients assigned to alice; this study's patient is not",
    ),
    (
        ("ward",),
        data(department="cardiology"),
        False,
        "role ward may see only patients assigned to alice; this study names no patient",
    ),
    (
        ("ward",),
        data(department="cardiology", patient_id="P1"),
        True,
        "role ward allows this study from hospital-a",
    ),
    (("ghost",), data(), False, "role ghost is not defined in the facility configuration"),
    ((), data(), False, "user alice holds no role"),
]


@pytest.mark.parametrize(("held", "attributes", "allowed", "reason"), CASES)
def test_each_dimension_allows_or_refuses_with_its_reason(
    held: tuple[str, ...], attributes: DataAttributes, allowed: bool, reason: str
) -> None:
    decision = decide(user(*held, patients=frozenset({"P1"})), ROLES, attributes, NOW)
    assert decision == Decision(allowed, (reason,))


def test_any_role_that_allows_is_enough_and_each_refusal_is_listed() -> None:
    message = data(EHR, message_type="ORU^R01")
    assert decide(user("radiology", "lab"), ROLES, message, NOW).allow
    refused = decide(user("radiology", "ward"), ROLES, data(EHR, message_type="ADT^A01"), NOW)
    assert not refused.allow
    assert refused.reasons == (
        "role radiology may see study, images; this transfer is ehr",
        "role ward may see data for cardiology; this message names no department",
    )


def test_a_disabled_user_reads_nothing_even_under_break_glass() -> None:
    gone = user("radiology", state=UserState.DISABLED, break_glass_until=NOW + 60, break_glass_reason="x")
    assert decide(gone, ROLES, data(modalities=("CT",)), NOW) == Decision(False, ("user alice is disabled",))


def test_break_glass_allows_what_the_roles_refuse_until_it_expires() -> None:
    message = data(EHR, message_type="ORU^R01")
    glass = user("radiology", break_glass_until=NOW + 600, break_glass_reason="patient crashing in ED")
    granted = decide(glass, ROLES, message, NOW)
    assert granted.allow and granted.break_glass
    assert granted.reasons[0] == "role radiology may see study, images; this transfer is ehr"
    assert granted.reasons[1].startswith("break-glass until ")
    assert granted.reasons[1].endswith(": patient crashing in ED")
    # What the role allows anyway is no break-glass read.
    assert decide(glass, ROLES, data(modalities=("CT",)), NOW) == Decision(
        True, ("role radiology allows this study from hospital-a",)
    )
    # Expiry is read from the clock at each decision: at the instant it ends, it is over.
    assert decide(glass, ROLES, message, NOW + 600) == Decision(
        False, ("role radiology may see study, images; this transfer is ehr",)
    )


def test_attributes_from_a_manifest_name_the_sender_and_contents() -> None:
    files = (FileEntry("a.hl7", 10, "0" * 64, "hl7"),)
    tid = str(uuid.uuid4())
    manifest = Manifest(
        transfer_id=tid, sender="hospital-a", recipient="hospital-b", kind=EHR, files=files, created=NOW
    )
    attributes = DataAttributes.from_manifest(manifest, message_type="ORU^R01")
    assert (attributes.transfer_id, attributes.peer, attributes.kind) == (tid, "hospital-a", EHR)
    assert attributes.contents == ("hl7",) and attributes.message_type == "ORU^R01"
    assert attributes.patient_id is None and attributes.modalities == ()
