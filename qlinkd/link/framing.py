"""Length-prefixed frames on a byte stream (the quantum channel): a 4-byte big-endian length, then the
frame. The limit is checked before a single byte of the body is read, so an oversized announcement
costs the reader nothing."""

from __future__ import annotations

import asyncio

from qlinkmed.qlinkd.errors import FrameError

LENGTH_BYTES = 4


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The next frame, or None on a clean end of stream between frames."""
    try:
        head = await reader.readexactly(LENGTH_BYTES)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError(f"stream ended inside a length prefix ({len(exc.partial)} of 4 bytes)") from None
    size = int.from_bytes(head, "big")
    if size > limit:
        raise FrameError(f"frame of {size} bytes announced, the limit is {limit}")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"stream ended inside a frame ({len(exc.partial)} of {size} bytes)") from None


def encode_length_prefixed(frame: bytes) -> bytes:
    return len(frame).to_bytes(LENGTH_BYTES, "big") + frame
