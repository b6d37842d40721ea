"""MLLP framing: whole frames, any split of a stream, garbage between frames, a frame without its end
block, oversized frames (bounded buffer), and the connection ending inside a frame."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.gateways.mllp_framing import (
    HEAD_BYTES,
    BytesSkipped,
    DecoderState,
    FrameAbandoned,
    FrameEvent,
    FrameOversized,
    MessageFramed,
    MllpDecoder,
    encode,
)

ADT = b"MSH|^~\\&|ADT|A|LAB|B|20240101120000||ADT^A01|MSG1|P|2.5\rPID|1||123^^^A||DOE^JOHN\r"
ORU = b"MSH|^~\\&|LIS|A|EHR|B|20240101120000||ORU^R01|MSG2|P|2.5.1\rOBR|1\rOBX|1|NM|x||5\r"

# Message bytes: anything but the two block characters.
message_bytes = st.binary(min_size=0, max_size=300).map(
    lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")
)


def feed_all(decoder: MllpDecoder, chunks: list[bytes]) -> list[FrameEvent]:
    events: list[FrameEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def messages(events: list[FrameEvent]) -> list[bytes]:
    return [e.message for e in events if isinstance(e, MessageFramed)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def test_encode_wraps_in_blocks_and_refuses_block_characters() -> None:
    assert encode(ADT) == b"\x0b" + ADT + b"\x1c\r"
    with pytest.raises(UsageError, match="block characters"):
        encode(b"MSH|\x1c")


def test_one_frame_whole() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(encode(ADT)) == [MessageFramed(ADT)]
    assert decoder.state is DecoderState.BETWEEN_FRAMES
    assert decoder.buffered == 0


def test_one_byte_at_a_time() -> None:
    decoder = MllpDecoder()
    stream = encode(ADT) + encode(ORU)
    events = feed_all(decoder, [stream[i : i + 1] for i in range(len(stream))])
    assert events == [MessageFramed(ADT), MessageFramed(ORU)]


def test_several_messages_in_one_read() -> None:
    decoder = MllpDecoder()
    assert messages(decoder.feed(encode(ADT) + encode(ORU) + encode(ADT))) == [ADT, ORU, ADT]


def test_end_block_at_a_chunk_end_then_its_cr_in_the_next() -> None:
    decoder = MllpDecoder()
    frame = encode(ADT)
    assert decoder.feed(frame[:-1]) == [MessageFramed(ADT)]
    assert decoder.state is DecoderState.AFTER_END
    # The CR is consumed silently, not reported as a skipped byte.
    assert decoder.feed(frame[-1:] + encode(ORU)) == [MessageFramed(ORU)]


def test_end_block_without_cr_is_accepted() -> None:
    decoder = MllpDecoder()
    assert messages(decoder.feed(b"\x0b" + ADT + b"\x1c" + encode(ORU))) == [ADT, ORU]


def test_garbage_between_frames_is_skipped_and_reported() -> None:
    decoder = MllpDecoder()
    events = decoder.feed(b"GET / HTTP/1.1\r\n" + encode(ADT) + b"\r\n" + encode(ORU))
    assert events == [
        BytesSkipped(16, blank=False),
        MessageFramed(ADT),
        BytesSkipped(2, blank=True),  # the CR LF after the frame's own CR
        MessageFramed(ORU),
    ]


def test_missing_end_block_abandons_the_frame_and_keeps_the_next() -> None:
    decoder = MllpDecoder()
    events = decoder.feed(b"\x0b" + ADT[:20] + encode(ORU))
    assert events == [FrameAbandoned(20), MessageFramed(ORU)]


def test_missing_end_block_across_chunks() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0b" + ADT[:20]) == []
    assert decoder.feed(ADT[20:30] + encode(ORU)) == [FrameAbandoned(30), MessageFramed(ORU)]


def test_oversized_frame_is_reported_with_its_head_and_the_buffer_stays_bounded() -> None:
    limit = 10_000
    decoder = MllpDecoder(max_message_bytes=limit)
    big = b"MSH|^~\\&|A|B|C|D|||ADT^A01|BIG1|P|2.5\r" + b"OBX|" + b"x" * 100_000 + b"\r"
    frame = encode(big)
    events: list[FrameEvent] = []
    for i in range(0, len(frame), 997):
        events.extend(decoder.feed(frame[i : i + 997]))
        assert decoder.buffered <= limit
    assert events == [FrameOversized(big[:HEAD_BYTES], len(big), limit)]
    # The stream goes on: the next frame is decoded normally.
    assert decoder.feed(encode(ADT)) == [MessageFramed(ADT)]


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    decoder = MllpDecoder(max_message_bytes=len(ADT))
    assert decoder.feed(encode(ADT)) == [MessageFramed(ADT)]
    decoder = MllpDecoder(max_message_bytes=len(ADT) - 1)
    [event] = decoder.feed(encode(ADT))
    assert isinstance(event, FrameOversized) and event.size == len(ADT)


def test_small_limit_keeps_only_the_head() -> None:
    decoder = MllpDecoder(max_message_bytes=HEAD_BYTES * 2)
    big = b"M" * (HEAD_BYTES * 3)
    [event] = decoder.feed(encode(big))
    assert isinstance(event, FrameOversized)
    assert event.head == big[:HEAD_BYTES]


def test_never_ending_frame_keeps_memory_bounded() -> None:
    decoder = MllpDecoder(max_message_bytes=1000)
    decoder.feed(b"\x0b")
    for _ in range(1000):
        assert decoder.feed(b"y" * 4096) == []
    assert decoder.buffered <= HEAD_BYTES
    assert decoder.state is DecoderState.DISCARDING


def test_eof_inside_a_frame_is_an_error() -> None:
    decoder = MllpDecoder()
    decoder.feed(b"\x0b" + ADT[:10])
    with pytest.raises(FrameError, match="no end block"):
        decoder.eof()
    assert decoder.state is DecoderState.BETWEEN_FRAMES


def test_eof_between_frames_is_fine() -> None:
    decoder = MllpDecoder()
    decoder.feed(encode(ADT) + b"\r\n")
    decoder.eof()  # does not raise
    assert decoder.state is DecoderState.BETWEEN_FRAMES


def test_limit_must_be_positive() -> None:
    with pytest.raises(UsageError):
        MllpDecoder(max_message_bytes=0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(message_bytes, min_size=0, max_size=8),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_split_of_a_stream_decodes_to_the_same_messages(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in msgs)
    decoder = MllpDecoder()
    events = feed_all(decoder, split(stream, cuts))
    assert events == [MessageFramed(m) for m in msgs]
    decoder.eof()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(message_bytes, message_bytes), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_garbage_between_frames_never_changes_the_messages(
    pairs: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    # Garbage without a start block between frames (it may hold end blocks: they mean nothing there).
    stream = b"".join(g.replace(b"\r", b"") + encode(m) for m, g in pairs)
    events = feed_all(MllpDecoder(), split(stream, cuts))
    assert messages(events) == [m for m, _ in pairs]
    assert not any(isinstance(e, FrameOversized | FrameAbandoned) for e in events)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(message_bytes, min_size=1, max_size=6),
    st.integers(min_value=1, max_value=200),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_split_with_a_limit_reports_each_frame_once(
    msgs: list[bytes], limit: int, cuts: list[int]
) -> None:
    stream = b"".join(encode(m) for m in msgs)
    decoder = MllpDecoder(max_message_bytes=limit)
    events: list[FrameEvent] = []
    for chunk in split(stream, cuts):
        events.extend(decoder.feed(chunk))
        assert decoder.buffered <= max(limit, HEAD_BYTES)
    expected: list[FrameEvent] = [
        MessageFramed(m) if len(m) <= limit else FrameOversized(m[:HEAD_BYTES], len(m), limit) for m in msgs
    ]
    assert events == expected
