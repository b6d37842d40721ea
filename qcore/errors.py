"""The qcore exception hierarchy: one root, local misuse kept apart from what the peer did."""

from __future__ import annotations

from enum import IntEnum


class QcoreError(Exception):
    """Root of every error qcore raises."""


class ConfigError(QcoreError, ValueError):
    """A parameter is out of its domain. `field` names it so a CLI can point at the flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class LocalProtocolError(QcoreError):
    """We drove a protocol object in a way its state does not allow."""


class RemoteProtocolError(QcoreError):
    """The peer sent something malformed or out of order."""


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode to a well-formed message."""


class IntegrityError(QcoreError):
    """An authentication tag or a verification hash did not match, whatever the cause."""


class AuthKeyExhausted(QcoreError):
    """The Wegman-Carter key store cannot pay for another tag: key generation must halt."""


class AbortReason(IntEnum):
    """Why a distillation round was abandoned. The value is also the wire code."""

    NONE = 0
    QBER_ABOVE_THRESHOLD = 1
    FINITE_KEY_EMPTY = 2
    CHSH_NOT_VIOLATED = 3
    DI_RATE_NONPOSITIVE = 4
    DECOY_BOUND_EMPTY = 5
    VERIFICATION_FAILED = 6
    AUTHENTICATION_FAILED = 7
    TOO_FEW_DETECTIONS = 8
    PROTOCOL_VIOLATION = 9
    AUTH_KEY_EXHAUSTED = 10
    PEER_ABORTED = 11
    TIMEOUT = 12
    LINK_LOST = 13
    CHANNEL_UNAVAILABLE = 14


class RoundAborted(QcoreError):
    """A round ended without key. Carries the reason code, the measured value and its threshold."""

    def __init__(
        self,
        reason: AbortReason,
        detail: str,
        *,
        measured: float | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(f"{reason.name.lower()}: {detail}")
        self.reason = reason
        self.detail = detail
        self.measured = measured
        self.threshold = threshold
