"""The data-plane messages as frozen dataclasses: what ``wire`` decodes every sealed frame's plaintext
into, and encodes from. Pure (no protobuf here: ``wire`` is the one module that converts), so the
session machines (``send_machine``, ``receive_machine``) can take them as typed inputs and dispatch on
their type.

Each message checks its own invariants on construction and raises FrameError, so a frame that decodes
into one of these is already well formed: IDs are UUIDs, a position has a state.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from qlinkmed.qlinkd.errors import FrameError

DATA_VERSION = 1
"""The data plane's wire version, carried in the unsealed ``Open``."""


def check_uuid(text: str, what: str) -> None:
    """FrameError unless `text` is a UUID in its canonical form."""
    try:
        if str(uuid.UUID(text)) == text:
            return
    except ValueError:
        pass
    raise FrameError(f"{what} {text[:40]!r} is not a UUID")


class TransferState(enum.IntEnum):
    """What a receiver holds of an offered transfer (the wire values of protobuf's ``TransferState``)."""

    NEW = 1
    """Nothing held: start at file 0, offset 0."""
    PARTIAL = 2
    """Resume at (file_index, offset)."""
    COMPLETE = 3
    """Delivered or refused already: nothing to send."""


MLKEM_ENCAPSULATION_KEY_BYTES = 1184
"""An ML-KEM-768 encapsulation key (FIPS 203), carried in a hybrid session's ``Open``."""
MLKEM_CIPHERTEXT_BYTES = 1088
"""An ML-KEM-768 ciphertext, carried in a hybrid session's ``Accept``."""
REFUSAL_TEXT_CHARS = 500
"""A session refusal's reason is cut to this length on the wire."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Open:
    """The sender's first frame, the only one not sealed: the QKD keys the traffic keys derive from, and
    (with the post-quantum hybrid) the ephemeral ML-KEM-768 encapsulation key."""

    version: int
    facility: str
    key_ids: tuple[str, ...]
    mlkem_encapsulation_key: bytes = field(default=b"", repr=False)
    """Empty: the session uses QKD key alone."""

    def __post_init__(self) -> None:
        for key_id in self.key_ids:
            check_uuid(key_id, "key ID")
        if len(self.mlkem_encapsulation_key) not in (0, MLKEM_ENCAPSULATION_KEY_BYTES):
            raise FrameError(
                f"ML-KEM-768 encapsulation key of {len(self.mlkem_encapsulation_key)} bytes, "
                f"not {MLKEM_ENCAPSULATION_KEY_BYTES}"
            )

    @property
    def hybrid(self) -> bool:
        return bool(self.mlkem_encapsulation_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Receiver, plain (before any sealed frame): the ML-KEM-768 ciphertext of a hybrid session."""

    mlkem_ciphertext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.mlkem_ciphertext) != MLKEM_CIPHERTEXT_BYTES:
            raise FrameError(
                f"ML-KEM-768 ciphertext of {len(self.mlkem_ciphertext)} bytes, not {MLKEM_CIPHERTEXT_BYTES}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRefusal:
    """Receiver, plain (instead of any sealed frame): the session is refused before its keys, and why."""

    reason: str

    def __post_init__(self) -> None:
        if not self.reason:
            raise FrameError("a session refusal without a reason")


OpenAnswer = Accept | SessionRefusal
"""The receiver's plain answers to an ``Open``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """Receiver: traffic keys derived, send."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """Sender: a transfer and its manifest (canonical JSON)."""

    transfer_id: str
    manifest: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """Receiver: what it already holds of an offered transfer."""

    transfer_id: str
    state: TransferState
    file_index: int
    offset: int

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """Sender: file bytes at (file_index, offset)."""

    transfer_id: str
    file_index: int
    offset: int
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Receiver: every byte before (file_index, offset) is written and fsynced."""

    transfer_id: str
    file_index: int
    offset: int

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered:
    """Receiver: the transfer is verified and in the inbox, exactly once."""

    transfer_id: str
    manifest_sha256: str

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """Receiver: the transfer is refused for good (bad hash, bad content)."""

    transfer_id: str
    reason: str

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class EhrMessage:
    """Sender, in a one-time-pad frame: a whole EHR message and its manifest."""

    transfer_id: str
    manifest: bytes = field(repr=False)
    body: bytes = field(repr=False)
    """Patient data: never in a repr or a log."""

    def __post_init__(self) -> None:
        check_uuid(self.transfer_id, "transfer ID")


@dataclass(frozen=True, slots=True, kw_only=True)
class PadKey:
    """Sender: a QKD key that later one-time-pad range frames cut their pads from."""

    key_id: str

    def __post_init__(self) -> None:
        check_uuid(self.key_id, "pad key ID")


DataMessage = Ready | Offer | Position | Chunk | Ack | Delivered | Refused | EhrMessage | PadKey
"""Everything inside a sealed data-plane frame."""
