"""The message codec: canonical, strict, and safe on hostile input (STYLE §6: whole, byte by byte,
truncated, trailing garbage)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlinkmed.qcore import messages as m
from qlinkmed.qcore.codec import Message, decode
from qlinkmed.qcore.errors import DecodeError, LocalProtocolError


def _samples() -> list[Message]:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, 77, dtype=np.uint8)
    return [
        m.Detections(round_id=3, detected=bits, bases=rng.integers(0, 2, int(bits.sum()), dtype=np.uint8)),
        m.Sifting(
            coincident=np.ones(5, np.uint8),
            bases=np.array([0, 1, 1, 0, 1], np.uint8),
            intensities=np.zeros(0, np.uint8),
            sample=np.array([1, 0, 1], np.uint8),
            test_bits=np.array([1, 1], np.uint8),
            cascade_seed=2**62 + 5,
        ),
        m.Estimate(test_bits=np.array([0, 1, 1], np.uint8)),
        m.ParityRequest(
            passes=np.array([0, 3], np.uint8),
            starts=np.array([0, 70000], np.uint32),
            ends=np.array([16, 2**32 - 1], np.uint32),
        ),
        m.ParityReply(parities=np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], np.uint8)),
        m.Verify(seed=bits, digest=bits[:34]),
        m.Amplify(seed=bits, length=1234),
        m.AuthTag(key_offset=96, tag=bytes(range(16))),
        m.Abort(reason=1, detail=b"qber"),
    ]


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_roundtrip_is_exact_and_canonical(msg: Message) -> None:
    data = msg.encode()
    again = decode(data)
    assert type(again) is type(msg)
    assert again == msg
    assert again.encode() == data


@pytest.mark.parametrize("msg", _samples(), ids=lambda x: type(x).__name__)
def test_every_truncation_and_trailing_garbage_is_refused(msg: Message) -> None:
    data = msg.encode()
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        decode(data + b"\x00")


def test_set_padding_bits_are_refused() -> None:
    data = bytearray(m.Estimate(test_bits=np.array([1, 0, 1], np.uint8)).encode())
    data[-1] |= 0x01  # a bit beyond the three declared
    with pytest.raises(DecodeError, match="padding"):
        decode(bytes(data))


def test_non_minimal_varint_and_unknown_type_are_refused() -> None:
    good = m.Amplify(seed=np.zeros(0, np.uint8), length=1).encode()
    with pytest.raises(DecodeError, match="non-minimal"):
        decode(good[:2] + b"\x81\x00")
    with pytest.raises(DecodeError, match="unknown message type"):
        decode(b"\xff")
    with pytest.raises(DecodeError, match="empty"):
        decode(b"")


def test_inconsistent_fields_are_refused_at_decode() -> None:
    bad = m.Detections.__new__(m.Detections)
    object.__setattr__(bad, "round_id", 1)
    object.__setattr__(bad, "detected", np.array([1, 1], np.uint8))
    object.__setattr__(bad, "bases", np.array([0], np.uint8))
    with pytest.raises(DecodeError, match="one entry per detection"):
        decode(bad.encode())


def test_local_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        m.Amplify(seed=np.zeros(1, np.uint8), length=-1).encode()
    with pytest.raises(LocalProtocolError):
        m.ParityRequest(passes=np.array([300]), starts=np.array([0]), ends=np.array([1])).encode()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_anything_but_decode_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except DecodeError:
        return
    assert msg.encode() == data  # anything accepted is canonical
