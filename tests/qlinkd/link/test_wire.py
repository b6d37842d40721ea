"""The wire schema: generated code up to date, every protocol message carried exactly, hostile frames
refused with a reason."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlinkmed.proto import qlinkmed_wire_pb2 as pb
from qlinkmed.qcore import messages as m
from qlinkmed.qcore.codec import Message
from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.messages import DISTILL_TYPES
from qlinkmed.qlinkd.link.wire import WIRE_VERSION, decode_frame, encode_frame
from tests.paths import REPO
from tests.qcore.test_codec import _samples

PROTO_DIR = REPO / "proto"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(PROTO_DIR / "qlinkmed_wire.proto"),
        ],
        check=True,
    )
    for name in ("qlinkmed_wire_pb2.py", "qlinkmed_wire_pb2.pyi"):
        assert (tmp_path / name).read_text() == (PROTO_DIR / name).read_text(), (
            f"proto/{name} is stale: regenerate with the command at the top of proto/qlinkmed_wire.proto"
        )


def test_schema_mirrors_every_protocol_message_by_name() -> None:
    classes = {
        cls.__name__: cls
        for cls in vars(m).values()
        if isinstance(cls, type) and issubclass(cls, Message) and hasattr(cls, "TYPE")
    }
    body = pb.Frame.DESCRIPTOR.oneofs_by_name["body"]
    carried = set()
    for field in body.fields:
        assert field.message_type is not None, field.name  # every body a frame carries is a message
        carried.add(field.message_type.name)
    link_messages = {
        "Hello",
        "RoundStart",
        "KeyStored",
        "KeyNotice",
        "NoticeAck",
        "AuditAnchor",
        "ChannelHello",
        "PulseTrain",
        "AnalyserSettings",
        "DetectionRecord",
        "PulsesSent",
        "ChannelError",
    }
    assert carried == set(classes) | link_messages
    for name, cls in classes.items():
        proto_fields = [f.name for f in pb.DESCRIPTOR.message_types_by_name[name].fields]
        assert proto_fields == [field for field, _ in cls.layout()], name


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert isinstance(msg, DISTILL_TYPES)  # what the wire carries of qcore's messages
    round_id, back = decode_frame(encode_frame(msg, 42))
    assert round_id == 42
    assert back == msg


def test_wrong_version_and_empty_frame_are_refused() -> None:
    frame = pb.Frame(version=WIRE_VERSION + 1, round=1)
    frame.estimate.SetInParent()
    with pytest.raises(FrameError, match="wire version"):
        decode_frame(frame.SerializeToString())
    with pytest.raises(FrameError, match="no message"):
        decode_frame(pb.Frame(version=WIRE_VERSION).SerializeToString())


def test_inconsistent_bits_and_arrays_are_refused() -> None:
    frame = pb.Frame(version=WIRE_VERSION, round=1)
    frame.estimate.test_bits.count = 20
    frame.estimate.test_bits.data = b"\x00"
    with pytest.raises(FrameError, match="cannot hold"):
        decode_frame(frame.SerializeToString())
    frame.estimate.test_bits.count = 3
    frame.estimate.test_bits.data = b"\x01"
    with pytest.raises(FrameError, match="padding"):
        decode_frame(frame.SerializeToString())
    frame = pb.Frame(version=WIRE_VERSION, round=1)
    frame.parity_request.passes = b"\x00\x01"
    frame.parity_request.starts = b"\x00\x00\x00"
    with pytest.raises(FrameError, match="whole number"):
        decode_frame(frame.SerializeToString())
    frame.parity_request.starts = b"\x00" * 4
    frame.parity_request.ends = b"\x00" * 8
    with pytest.raises(FrameError, match="equal length"):
        decode_frame(frame.SerializeToString())
    detections = pb.Frame(version=WIRE_VERSION, round=1)
    detections.detections.detected.count = 8
    detections.detections.detected.data = bytes([0b11000000])
    detections.detections.bases = b"\x00"
    with pytest.raises(FrameError, match="one entry per detection"):
        decode_frame(detections.SerializeToString())


def test_an_encoded_frame_truncated_anywhere_never_escapes_as_another_error() -> None:
    data = encode_frame(
        m.Sifting(
            coincident=np.ones(9, np.uint8),
            bases=np.zeros(9, np.uint8),
            intensities=np.zeros(0, np.uint8),
            sample=np.zeros(4, np.uint8),
            test_bits=np.zeros(0, np.uint8),
            cascade_seed=5,
        ),
        3,
    )
    refused = 0
    for cut in range(len(data)):
        try:
            decode_frame(data[:cut])
        except FrameError:
            refused += 1
    # Protobuf cannot tell a frame cut at a field boundary from a shorter one (the transcript tag does);
    # every other cut is refused, and nothing escapes as another exception.
    assert refused >= len(data) - 12


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        round_id, msg = decode_frame(data)
        assert isinstance(msg, Message)  # anything accepted is a well-formed protocol message
        assert round_id >= 0


def test_an_audit_anchor_round_trips_and_a_malformed_one_is_refused() -> None:
    anchor = lm.AuditAnchor(seq=134, digest="ab" * 32, held_seq=0, held_digest="", reply=True)
    assert decode_frame(encode_frame(anchor, 0)) == (0, anchor)
    for seq, digest, why in [
        (3, "", "without a digest"),
        (3, "AB" * 32, "lowercase hex"),
        (3, "ab" * 31, "lowercase hex"),
        (0, "ab" * 32, "positive seq"),
    ]:
        frame = pb.Frame(version=WIRE_VERSION, round=0)
        frame.audit_anchor.held_seq = seq
        frame.audit_anchor.held_digest = digest
        with pytest.raises(FrameError, match=why):
            decode_frame(frame.SerializeToString())
