"""systemd service notifications (sd_notify(3)) without a dependency: one datagram per message.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op. A failed send is logged, never raised: the
daemon must not stop serving keys because its supervisor is unreachable.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Talks to the service manager named by NOTIFY_SOCKET (a path, or "@name" for an abstract socket)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._environ = dict(env)
        target = env.get("NOTIFY_SOCKET", "")
        # "@" marks Linux's abstract namespace, addressed with a leading NUL byte.
        self._address: str | None = ("\0" + target[1:] if target.startswith("@") else target) or None
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", message.split("=", 1)[0], exc)
            return False
        return True

    def ready(self) -> bool:
        """Start-up finished: listeners bound, state loaded (Type=notify units wait for this)."""
        return self._send(f"READY=1\nMAINPID={os.getpid()}")

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status`."""
        return self._send("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> bool:
        """Still alive (WatchdogSec=)."""
        return self._send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self._send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() calls (half of WATCHDOG_USEC), or None if no watchdog is asked of
        this process."""
        usec = self._environ.get("WATCHDOG_USEC")
        pid = self._environ.get("WATCHDOG_PID")
        if not usec:
            return None
        if pid and pid != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC")
            return None
        return value / 2e6 if value > 0 else None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __repr__(self) -> str:
        return f"Notifier(enabled={self.enabled})"
