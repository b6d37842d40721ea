"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2), sans-IO: a decoder fed whatever byte
chunks the socket gives and returning the events they complete, and an encoder.

A frame is <SB> message <EB><CR> (SB 0x0B, EB 0x1C, CR 0x0D). The decoder holds at most one frame's
bytes, bounded by `max_message_bytes`: past that it keeps only the frame's head (enough to read MSH-10
and answer the sender) and discards the rest until the end block, so a peer that never ends a frame costs
memory of one bounded buffer, never more. Bytes between frames are skipped and counted (interface engines
send stray CR/LF; anything else is reported). A start block inside a frame means the frame before it
never got its end block: that frame is reported abandoned and the new one starts. The search for the
block characters is bytes.find (native), never a Python loop over bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import FrameError

SB = 0x0B
EB = 0x1C
CR = 0x0D
_SB, _EB, _CR = bytes([SB]), bytes([EB]), bytes([CR])

HEAD_BYTES = 4096
"""What is kept of an oversized frame: its start, where MSH (and its control ID) is."""
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20


class DecoderState(enum.Enum):
    BETWEEN_FRAMES = "between_frames"
    """Waiting for a start block; other bytes are skipped."""
    IN_FRAME = "in_frame"
    """Collecting a message until its end block."""
    DISCARDING = "discarding"
    """The frame passed the size limit: only its head is kept, the rest dropped until its end block."""
    AFTER_END = "after_end"
    """An end block was seen at the very end of a chunk: the CR that should follow is still to come."""


@dataclass(frozen=True, slots=True)
class MessageFramed:
    message: bytes
    """The bytes between the start block and the end block."""


@dataclass(frozen=True, slots=True)
class FrameOversized:
    head: bytes
    """The first HEAD_BYTES of the frame (to find MSH-10 and answer with an error ACK)."""
    size: int
    """The whole frame's length (the bytes between its blocks)."""
    limit: int


@dataclass(frozen=True, slots=True)
class FrameAbandoned:
    """A start block arrived inside a frame: the frame before it has no end block and is dropped."""

    size: int


@dataclass(frozen=True, slots=True)
class BytesSkipped:
    """Bytes between frames that are no start block (stray line ends or garbage)."""

    count: int
    blank: bool
    """True when they were all CR, LF, space or tab (common, harmless)."""


FrameEvent = MessageFramed | FrameOversized | FrameAbandoned | BytesSkipped


class MllpDecoder:
    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise UsageError(f"max_message_bytes must be at least 1, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.state = DecoderState.BETWEEN_FRAMES
        self._buffer = bytearray()
        self._size = 0
        """The current frame's length so far (more than the buffer holds once discarding)."""

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress (bounded by max(max_message_bytes, HEAD_BYTES))."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self.state is DecoderState.AFTER_END:
                self.state = DecoderState.BETWEEN_FRAMES
                if view[pos] == CR:
                    pos += 1
                continue
            if self.state is DecoderState.BETWEEN_FRAMES:
                start = data.find(_SB, pos)
                stop = len(data) if start < 0 else start
                if stop > pos:
                    skipped = data[pos:stop]
                    events.append(BytesSkipped(len(skipped), not skipped.strip(b"\r\n \t")))
                if start < 0:
                    break
                pos = start + 1
                self._begin()
                continue
            # In a frame (collecting or discarding): up to the next end block, or a start block that
            # shows this frame was never ended.
            end = data.find(_EB, pos)
            restart = data.find(_SB, pos, len(data) if end < 0 else end)
            if restart >= 0:
                self._take(view[pos:restart])
                events.append(FrameAbandoned(self._size))
                pos = restart + 1
                self._begin()
                continue
            if end < 0:
                self._take(view[pos:])
                break
            self._take(view[pos:end])
            events.append(self._finish())
            pos = end + 1
            if pos < len(view):
                if view[pos] == CR:
                    pos += 1
                self.state = DecoderState.BETWEEN_FRAMES
            else:
                self.state = DecoderState.AFTER_END
        return events

    def eof(self) -> None:
        """The connection ended: FrameError if it ended inside a frame (the frame is lost)."""
        if self.state in (DecoderState.IN_FRAME, DecoderState.DISCARDING):
            size = self._size
            self._begin()
            self.state = DecoderState.BETWEEN_FRAMES
            raise FrameError(f"connection closed inside an MLLP frame after {size} bytes (no end block)")

    def _begin(self) -> None:
        self._buffer = bytearray()
        self._size = 0
        self.state = DecoderState.IN_FRAME

    def _take(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        if self.state is DecoderState.IN_FRAME:
            if self._size <= self.max_message_bytes:
                self._buffer += chunk
                return
            self.state = DecoderState.DISCARDING
            del self._buffer[HEAD_BYTES:]
        # Discarding: the head is topped up to HEAD_BYTES, the rest dropped.
        room = HEAD_BYTES - len(self._buffer)
        if room > 0:
            self._buffer += chunk[:room]

    def _finish(self) -> FrameEvent:
        buffer, size = bytes(self._buffer), self._size
        oversized = self.state is DecoderState.DISCARDING
        self._buffer = bytearray()
        self._size = 0
        if oversized:
            return FrameOversized(buffer[:HEAD_BYTES], size, self.max_message_bytes)
        return MessageFramed(buffer)


def encode(message: bytes) -> bytes:
    """One MLLP frame. UsageError if the message holds a block character (HL7 forbids them in content)."""
    if _SB in message or _EB in message:
        raise UsageError("an HL7 message must not contain the MLLP block characters 0x0B or 0x1C")
    return b"".join((_SB, message, _EB, _CR))
