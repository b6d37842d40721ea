"""The daemon's branch of qlink's one exception tree (``qcore.errors`` draws the whole tree and holds the
classes both share: ``ConfigError`` and ``IntegrityError`` are those, named here too so daemon code imports
its errors from one place).

    QlinkError (qcore.errors)
    └── QlinkdError
        ├── FrameError          bytes from a peer that are no frame of ours (also a RemoteProtocolError)
        │   └── ChannelRefused  the channel service refuses a connection (identity, link or limit)
        ├── PkiError            a certificate or key file that cannot be written or loaded
        ├── StoreError          the key store refused an operation
        │   ├── InsufficientKey, KeyNotFound, NotAuthorised
        ├── AuditError          the audit log refused a record or does not verify
        ├── AccessError         the user store refused an operation (unknown user, a name taken, a bad role)
        │   └── AuditAnchorError    it no longer holds a head a peer facility anchored
        ├── SealError           we cannot seal (a local refusal)
        │   ├── RekeyRequired, KeyMaterialShort, HybridUnavailable
        ├── ContentError        a file that is not what it claims (also a RemoteError: it came from outside)
        ├── TransferError       a transfer refused or not completed
        ├── FilterError         an inbox listing filter that cannot be used (also a UsageError)
        ├── SessionClosed       a data session ended or its receiver broke the protocol (a RemoteError)
        ├── Rejected            a data frame or message the receiver refuses (a RemoteError)
        ├── SessionMisuse       our shell drove a data-plane machine against its state (a LocalProtocolError)
        ├── KmeError            an external ETSI 014 KME refused a request or answered badly (a RemoteError)
        │   └── KmeUnavailable  it could not be reached, timed out or answered 503: try again later
        └── StatusFormatError   a daemon status answer that is not what the daemon sends (a RemoteError)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qlinkmed.qlinkd.content.issues import Issue

from qlinkmed.qcore.errors import (
    ConfigError,
    IntegrityError,
    LocalError,
    LocalProtocolError,
    QlinkError,
    RemoteError,
    RemoteProtocolError,
    UsageError,
)

__all__ = [
    "AccessError",
    "AuditAnchorError",
    "AuditError",
    "ChannelRefused",
    "ConfigError",
    "ContentError",
    "FilterError",
    "FrameError",
    "HybridUnavailable",
    "InsufficientKey",
    "IntegrityError",
    "KeyMaterialShort",
    "KeyNotFound",
    "KmeError",
    "KmeUnavailable",
    "NotAuthorised",
    "PkiError",
    "QlinkdError",
    "Rejected",
    "RekeyRequired",
    "SealError",
    "SessionClosed",
    "SessionMisuse",
    "StatusFormatError",
    "StoreError",
    "TransferError",
]


class QlinkdError(QlinkError):
    """Root of the errors only the daemon raises."""


class FrameError(QlinkdError, RemoteProtocolError):
    """Bytes from a peer that are not a well-formed frame of our wire version. The connection that sent
    them is closed with this reason; nothing else is affected."""


class ChannelRefused(FrameError):
    """The channel service refuses a facility connection: a certificate that names no facility of its
    links, a hello for another facility or an unconfigured link, a connection over its identity's limit.
    `reason` is the short label counted in ``qlink_channel_refused_total``; the message says it in full
    and is sent to the refused party."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PkiError(QlinkdError):
    """A certificate or key file that cannot be written or loaded. `path` names the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class StoreError(QlinkdError):
    """The durable key store refused an operation, or found its contents inconsistent. `field` names the
    offending input or stored item (``preshared_key``, ``round_id``, ``segments``...) when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class AccessError(QlinkdError):
    """The user store refused an operation: an unknown user, a name already taken, a role the facility
    configuration does not define, an out-of-range break-glass period. `field` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class InsufficientKey(StoreError):
    """The pool holds less committed, unconsumed key than a request needs. Nothing was consumed."""

    def __init__(self, *, requested_bits: int, available_bits: int) -> None:
        super().__init__(f"requested {requested_bits} bits, the pool holds {available_bits}", field="number")
        self.requested_bits = requested_bits
        self.available_bits = available_bits


class KeyNotFound(StoreError):
    """One or more requested key IDs are not held for delivery (never known, already fetched, or expired
    unfetched: `expired` names those of `key_ids` deleted by the key lifetime). Nothing was consumed."""

    def __init__(self, key_ids: tuple[str, ...], *, expired: tuple[str, ...] = ()) -> None:
        why = f" ({len(expired)} expired before they were fetched)" if expired else ""
        super().__init__(f"{len(key_ids)} key ID(s) not found{why}", field="key_IDs")
        self.key_ids = key_ids
        self.expired = expired


class NotAuthorised(StoreError):
    """A caller asked for keys that were not handed out for it (wrong slave or master SAE). Nothing was
    consumed."""

    def __init__(self, key_ids: tuple[str, ...]) -> None:
        super().__init__(f"{len(key_ids)} key ID(s) not deliverable to this caller", field="key_IDs")
        self.key_ids = key_ids


class AuditError(QlinkdError):
    """The audit log refused a record, or its hash chain does not verify. `line` is the 1-based line of
    the file at fault (None when the record was refused before writing)."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"audit log line {line}: {message}" if line is not None else message)
        self.line = line
        self.message = message


class AuditAnchorError(AuditError):
    """The audit log no longer holds the head (`seq`, `digest`) that `holder` (a peer facility) recorded:
    `found` is None when the log ends at `ends_at`, before that seq (the tail is missing), else the digest
    the log has there (rewritten). `last_good` is the highest anchor that still matches (0: none)."""

    def __init__(
        self,
        message: str,
        *,
        holder: str,
        seq: int,
        digest: str,
        found: str | None,
        ends_at: int,
        last_good: int,
    ) -> None:
        super().__init__(message, line=seq if found is not None else ends_at + 1)
        self.holder = holder
        self.seq = seq
        self.digest = digest
        self.found = found
        self.ends_at = ends_at
        self.last_good = last_good


class SealError(QlinkdError, LocalError):
    """We cannot seal (a local refusal, nothing was produced or consumed)."""


class RekeyRequired(SealError):
    """The traffic key reached a hard limit (`limit`: ``messages``, ``bytes`` or ``age``): it seals no more.
    Derive a new key from fresh QKD key material."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message


class KeyMaterialShort(SealError):
    """Less key material than the operation needs was provided. Nothing was consumed."""

    def __init__(self, *, needed_bits: int, provided_bits: int) -> None:
        super().__init__(f"needs {needed_bits} bits of key material, {provided_bits} provided")
        self.needed_bits = needed_bits
        self.provided_bits = provided_bits


class HybridUnavailable(SealError):
    """The installed ``cryptography`` has no ML-KEM-768, so the post-quantum hybrid cannot be used."""


class ContentError(QlinkdError, RemoteError):
    """A file whose content is not what it claims, or not a kind qlink carries (DICOM, PNG, JPEG, FHIR
    JSON, HL7 v2). `name` is the file's name as the user gave it, `problem` what is wrong with it.
    `issues` lists every problem validation found (`content.issues.Issue`: location, severity, code,
    diagnostics, as an OperationOutcome's issues), when it looked for more than one (FHIR, HL7 v2)."""

    def __init__(self, name: str, problem: str, *, issues: tuple[Issue, ...] = ()) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem
        self.issues = issues


class TransferError(QlinkdError):
    """A transfer the daemon refuses or cannot complete (unknown peer, bad manifest, a size or hash that
    does not match). `transfer` names the transfer when there is one."""

    def __init__(self, message: str, *, transfer: str | None = None) -> None:
        super().__init__(message)
        self.transfer = transfer
        self.message = message


class FilterError(QlinkdError, UsageError):
    """An inbox listing filter value that cannot be used; `option` names the filter ("since", "limit")."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


class SessionClosed(QlinkdError, RemoteError):
    """The data connection ended, or the receiver broke the protocol: the sender reconnects with a fresh
    key."""


class Rejected(QlinkdError, RemoteError):
    """A frame or message the data receiver refuses; `reason` is a short code for the audit log and metrics
    (``protocol`` for a message out of place, else an ``IntegrityFailure`` value, ``identity``,
    ``key_unknown``, ``malformed`` or ``version``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SessionMisuse(QlinkdError, LocalProtocolError):
    """Our own shell asked a data-plane machine for something its state does not allow: a bug here, not
    the peer's."""


class KmeError(QlinkdError, RemoteError):
    """An external ETSI GS QKD 014 KME (a peer link's ``key_source = "etsi014"``) refused a request, or
    answered something that is no ETSI 014 answer. `status` is its HTTP status (None when there was no
    answer), `message` its ETSI error message (or what was wrong with the answer), `url` the request."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        where = f"KME {url}" + (f" answered {status}" if status is not None else "")
        super().__init__(f"{where}: {message}")
        self.url = url
        self.status = status
        self.message = message


class KmeUnavailable(KmeError):
    """The KME could not be reached, did not answer in time, or answered 503 (its server error, or no key
    to give): nothing was taken, and the same request may succeed later."""


class StatusFormatError(QlinkdError, RemoteError, ValueError):
    """A status answer that is not what the daemon sends: `field` names the entry at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"status field '{field}': {message}")
        self.field = field
        self.message = message
