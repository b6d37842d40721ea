"""The one exception tree of qlink (qcore, the daemon and the CLI alike), rooted in ``QlinkError``.

    QlinkError
    ├── LocalError              we misused an API, or refuse something ourselves
    │   ├── UsageError          a call that breaks a documented precondition (also a ValueError)
    │   ├── ConfigError         a configuration value or parameter out of its domain (also a ValueError)
    │   ├── LocalProtocolError  we drove a protocol object in a way its state does not allow
    │   ├── AuthKeyExhausted    the Wegman-Carter key cannot pay for another tag
    │   └── SimulationError     the quantum simulator failed to give an answer
    ├── RemoteError             the peer, or input from outside, is at fault
    │   ├── RemoteProtocolError the peer sent something malformed or out of order
    │   │   └── DecodeError     bytes that do not decode to a well-formed message (also a ValueError)
    │   └── IntegrityError      a tag, hash or frame check failed; ``reason`` says which check
    └── RoundAborted            a distillation round ended without key (reason code, measured value)

The daemon adds its own branch (``qlinkd.errors.QlinkdError``) under the same root.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class QlinkError(Exception):
    """Root of every error qlink raises."""


class LocalError(QlinkError):
    """We misused an API, or refuse something ourselves; the peer did nothing wrong."""


class RemoteError(QlinkError):
    """The peer, or input from outside (a file, a stored blob), is at fault."""


class UsageError(LocalError, ValueError):
    """A call that breaks a documented precondition (a bad argument, an object in the wrong state for it).
    Also a ``ValueError``, which is what such a call raised before the tree existed."""


class ConfigError(LocalError, ValueError):
    """A configuration value or parameter that is missing, mistyped, unknown or out of its domain. `field`
    names it (a dotted path such as ``peer[0].address`` for a file, the parameter's name for a call) so a
    CLI can point at the flag and an operator at the line; for a file that cannot be read or parsed it is
    the file's path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config field '{field}': {message}")
        self.field = field
        self.message = message


class LocalProtocolError(LocalError):
    """We drove a protocol object in a way its state does not allow."""


class AuthKeyExhausted(LocalError):
    """The Wegman-Carter key store cannot pay for another tag: key generation must halt."""


class SimulationError(LocalError):
    """The quantum simulator (qiskit-aer) failed or gave an answer that cannot be a measurement."""


class RemoteProtocolError(RemoteError):
    """The peer sent something malformed or out of order."""


class DecodeError(RemoteProtocolError, ValueError):
    """Bytes that do not decode to a well-formed message (also a ValueError, as malformed input is)."""


class IntegrityFailure(Enum):
    """Which check refused (``IntegrityError.reason``): for logs and the audit log, never for the peer."""

    TRUNCATED = "truncated"
    VERSION = "version"
    KEY_MISMATCH = "key_mismatch"
    TOO_LARGE = "too_large"
    TAG = "tag"
    REPLAY = "replay"
    KEY_EXPIRED = "key_expired"
    REORDERED = "reordered"


class IntegrityError(RemoteError):
    """An authentication tag, a verification hash or a sealed frame did not check out: truncated, wrong
    version, another key, a failed tag, a replay or a frame out of order, a key past its limit. Every
    such failure raises this one class whatever the cause (as Fernet's ``InvalidToken``); `reason` says
    which check refused it, for the audit log only."""

    def __init__(self, reason: IntegrityFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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


class RoundAborted(QlinkError):
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
