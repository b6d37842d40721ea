"""File names in a manifest are relative POSIX paths of safe components (`manifest.check_name`): a CD
export's tree ("SE1/IM1", "SE2/IM1") travels, and a hostile peer's manifest ("../x", "/etc/x", a NUL, a
control character, a name that is also a folder) is refused by the receiver before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import pytest

from qlinkmed.qlinkd.dataplane.events import Offer
from qlinkmed.qlinkd.dataplane.manifest import (
    MAX_NAME_BYTES,
    FileEntry,
    Manifest,
    TransferKind,
    check_name,
    check_names,
)
from qlinkmed.qlinkd.dataplane.receive_machine import ReceivePhase, ReceiverMachine, ReceiveStage
from qlinkmed.qlinkd.errors import Rejected, TransferError
from tests.qlinkd.dataplane.test_dataplane_machine import TID, A, B, _receiver_in

HOSTILE = [
    ("../etc/passwd", "'..'"),
    ("SE1/../../x", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("a//b", "empty path component"),
    ("a/", "empty path component"),
    ("./a", "'.'"),
    ("x\x00y", "U+0000"),
    ("x\ny", "U+000A"),
    ("x\x1b[2Jy", "U+001B"),
    ("x\x85y", "U+0085"),
    ("a\\..\\b", "U+005C"),
    ("\ud800", "lone surrogate"),
    ("a" * 256, "over 255 bytes"),
    ("é" * 128, "over 255 bytes"),
    ("/".join(["a"] * 33), "33 path components"),
    ("/".join(["a" * 200] * 6), f"over {MAX_NAME_BYTES}"),
    ("", "empty name"),
]


def _manifest_json(names: list[str]) -> bytes:
    """A manifest as a hostile peer would write it: JSON made by hand, never through `Manifest`."""
    digest = hashlib.sha256(b"1").hexdigest()
    body = {
        "transfer_id": TID,
        "sender": A,
        "recipient": B,
        "kind": "study",
        "created": time.time(),
        "study_uid": None,
        "files": [[name, 1, digest, "dicom"] for name in names],
    }
    return json.dumps(body).encode()


@pytest.mark.parametrize("name", ["IM1", "SE1/IM1", "CT 001+contrast.dcm", "Ünïcödé/画像 1.dcm", "a" * 255])
def test_safe_relative_names_are_kept(name: str) -> None:
    assert check_name(name) is None
    manifest = Manifest.from_json(_manifest_json([name]))
    assert manifest.files[0].name == name


@pytest.mark.parametrize(("name", "problem"), HOSTILE)
def test_hostile_names_are_refused_with_the_reason(name: str, problem: str) -> None:
    assert problem in (check_name(name) or "")
    with pytest.raises(TransferError, match="bad name") as caught:
        Manifest.from_json(_manifest_json([name]))
    assert problem in caught.value.message


def test_a_cd_export_tree_with_repeated_file_names_is_one_manifest() -> None:
    names = ["SE1/IM1", "SE1/IM2", "SE2/IM1", "SE2/IM2"]
    manifest = Manifest.from_json(_manifest_json(names))
    assert [f.name for f in manifest.files] == names
    assert check_names(names) is None


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["SE1/IM1", "SE1/IM1"], "appears twice"),
        (["SE1/IM1", "se1/im1"], "differ only in case"),
        (["SE1", "SE1/IM1"], "lies under 'SE1', which is a file"),
        (["SE1/IM1", "SE1"], "also the folder of 'SE1/IM1'"),
        (["A/B/C", "a/b"], "also the folder of 'A/B/C'"),
    ],
)
def test_names_that_clash_on_disk_are_refused(names: list[str], problem: str) -> None:
    clash = check_names(names)
    assert clash is not None and clash[0] == 1 and problem in clash[1]
    with pytest.raises(TransferError, match=problem):
        Manifest.from_json(_manifest_json(names))


@pytest.mark.parametrize(("name", "problem"), HOSTILE[:8])
def test_the_receiver_ends_the_session_on_a_hostile_manifest(name: str, problem: str) -> None:
    machine: ReceiverMachine = _receiver_in(ReceivePhase.OPEN, ReceiveStage.IDLE)
    with pytest.raises(Rejected, match="bad name"):
        machine.receive(Offer(transfer_id=TID, manifest=_manifest_json([name])))


def test_a_manifest_built_here_refuses_an_unsafe_name_too() -> None:
    digest = hashlib.sha256(b"1").hexdigest()
    with pytest.raises(TransferError, match="absolute path"):
        Manifest(
            transfer_id=str(uuid.uuid4()),
            sender=A,
            recipient=B,
            kind=TransferKind.STUDY,
            files=(FileEntry("/tmp/x", 1, digest, "dicom"),),
            created=time.time(),
        )
