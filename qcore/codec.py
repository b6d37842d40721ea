"""A strict, canonical binary encoding for qcore's protocol messages.

Every message is a frozen dataclass whose field annotations say how each field is written. Encoding is
deterministic (the same message always gives the same bytes), which the Wegman-Carter transcript tags
and the recorded test transcripts rely on. Decoding rejects anything that is not exactly such an
encoding: truncation, trailing bytes, non-minimal varints, set padding bits, values out of range.

Field kinds:
- ``int``: unsigned LEB128 varint (non-negative only, at most 64 bits)
- ``float``: IEEE 754 binary64, little-endian
- ``bytes``: varint length, then the bytes
- ``Bits``: a 0/1 uint8 array: varint bit count, then the bits packed MSB-first, padding bits zero
- ``U8s`` / ``U32s``: varint count, then the values little-endian
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar, dataclass_transform

import numpy as np

from .errors import DecodeError, LocalProtocolError

_MAX_VARINT_BYTES = 10


class ArrayKind:
    """Marker carried in Annotated[...] to say how an ndarray field is encoded."""

    def __init__(self, name: str, dtype: np.dtype | None) -> None:
        self.name = name
        self.dtype = dtype
        info = np.iinfo(dtype) if dtype is not None else None
        self.bounds = (int(info.min), int(info.max)) if info is not None else (0, 1)

    def __repr__(self) -> str:
        return f"ArrayKind({self.name})"


BITS = ArrayKind("bits", None)
U8 = ArrayKind("u8", np.dtype("<u1"))
U32 = ArrayKind("u32", np.dtype("<u4"))

Bits = Annotated[np.ndarray, BITS]
U8s = Annotated[np.ndarray, U8]
U32s = Annotated[np.ndarray, U32]


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0 or value >= 1 << 64:
        raise LocalProtocolError(f"varint out of range: {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def varint(self) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            if self.pos >= len(self.data):
                raise DecodeError("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise DecodeError("non-minimal varint")
                if value >= 1 << 64:
                    raise DecodeError("varint exceeds 64 bits")
                return value
        raise DecodeError("varint longer than 10 bytes")

    def take(self, n: int) -> memoryview:
        if n > len(self.data) - self.pos:
            raise DecodeError(f"truncated: need {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def _encode_field(out: bytearray, kind: Any, value: Any, name: str) -> None:
    if kind is int:
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise LocalProtocolError(f"field {name}: expected int, got {type(value).__name__}")
        _put_varint(out, int(value))
    elif kind is float:
        out += struct.pack("<d", float(value))
    elif kind is bytes:
        _put_varint(out, len(value))
        out += value
    elif kind is BITS:
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise LocalProtocolError(f"field {name}: bits must be one-dimensional")
        _put_varint(out, arr.size)
        out += np.packbits(arr.astype(np.uint8, copy=False) & 1).tobytes()
    elif isinstance(kind, ArrayKind) and kind.dtype is not None:  # BITS, the one without a dtype, is above
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise LocalProtocolError(f"field {name}: array must be one-dimensional")
        # An array already of the wire dtype cannot hold an out-of-range value: skip the two reductions.
        if arr.dtype != kind.dtype and arr.size:
            low, high = kind.bounds
            if int(arr.min()) < low or int(arr.max()) > high:
                raise LocalProtocolError(f"field {name}: values outside {kind.name}")
        _put_varint(out, arr.size)
        out += arr.astype(kind.dtype, copy=False).tobytes()
    else:
        raise LocalProtocolError(f"field {name}: unsupported kind {kind!r}")


def _decode_field(reader: _Reader, kind: Any, name: str) -> Any:
    if kind is int:
        return reader.varint()
    if kind is float:
        return struct.unpack("<d", reader.take(8))[0]
    if kind is bytes:
        return bytes(reader.take(reader.varint()))
    if kind is BITS:
        count = reader.varint()
        nbytes = (count + 7) // 8
        raw = np.frombuffer(reader.take(nbytes), dtype=np.uint8)
        if count % 8 and raw[-1] & ((1 << (8 - count % 8)) - 1):
            raise DecodeError(f"field {name}: padding bits set")
        return np.unpackbits(raw, count=count)
    if isinstance(kind, ArrayKind) and kind.dtype is not None:  # BITS, the one without a dtype, is above
        count = reader.varint()
        width = kind.dtype.itemsize
        if count > (len(reader.data) - reader.pos) // width:
            raise DecodeError(f"field {name}: truncated array of {count}")
        values = np.frombuffer(reader.take(count * width), dtype=kind.dtype)
        return values.copy() if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))
    raise DecodeError(f"field {name}: unsupported kind {kind!r}")


def _field_kind(hint: Any) -> Any:
    if typing.get_origin(hint) is Annotated:
        return typing.get_args(hint)[1]
    return hint


class Message:
    """Base of every protocol message. Subclasses are frozen dataclasses with a unique TYPE code."""

    __slots__ = ()
    TYPE: ClassVar[int]
    _registry: ClassVar[dict[int, type[Message]]] = {}
    _layout: ClassVar[tuple[tuple[str, Any], ...]]

    @classmethod
    def layout(cls) -> tuple[tuple[str, Any], ...]:
        """(field name, field kind) in wire order; the wire schema in proto/ follows it by name."""
        layout = cls.__dict__.get("_layout")
        if layout is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            # Each subclass is made a dataclass by @message; the base class the checker sees is not one.
            fields = dataclasses.fields(cls)  # type: ignore[arg-type]
            layout = tuple((f.name, _field_kind(hints[f.name])) for f in fields)
            cls._layout = layout
        return layout

    def encode(self) -> bytes:
        out = bytearray([self.TYPE])
        for name, kind in self.layout():
            _encode_field(out, kind, getattr(self, name), name)
        return bytes(out)

    def __eq__(self, other: object) -> bool:
        # Fields hold numpy arrays, so compare canonical encodings.
        return isinstance(other, Message) and type(other) is type(self) and other.encode() == self.encode()

    def __hash__(self) -> int:
        return hash(self.encode())


M = TypeVar("M", bound=Message)


@dataclass_transform(frozen_default=True, kw_only_default=True, eq_default=False)
def message(code: int) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a frozen keyword-only dataclass of it and register it under `code`. (The
    transform tells type checkers what the dataclass call below makes of the class.)"""

    def wrap(cls: type[M]) -> type[M]:
        if code in Message._registry:
            raise TypeError(f"message type {code} registered twice")
        made = dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)(cls)
        made.TYPE = code
        Message._registry[code] = made
        return made

    return wrap


def decode(data: bytes | memoryview) -> Message:
    """Decode exactly one message; any defect raises DecodeError."""
    if not data:
        raise DecodeError("empty message")
    cls = Message._registry.get(data[0])
    if cls is None:
        raise DecodeError(f"unknown message type {data[0]}")
    reader = _Reader(data)
    reader.pos = 1
    values = {name: _decode_field(reader, kind, name) for name, kind in cls.layout()}
    if reader.pos != len(reader.data):
        raise DecodeError(f"{cls.__name__}: {len(reader.data) - reader.pos} trailing bytes")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from exc
