"""The qlinkd exception hierarchy."""

from __future__ import annotations


class QlinkdError(Exception):
    """Root of every error qlinkd raises."""


class FrameError(QlinkdError):
    """Bytes from a peer that are not a well-formed frame of our wire version. The connection that sent
    them is closed with this reason; nothing else is affected."""
