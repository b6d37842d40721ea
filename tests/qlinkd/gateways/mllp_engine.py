"""An interface engine for the tests and the benchmark, built from independent code: hl7apy's MLLPServer
(a threaded socketserver that reads one framed message per connection and closes it) answering with ACKs
that python-hl7 builds. `answer` says what it answers (AA, AE, AR); `received` is every message it got,
in order, as hl7apy decoded it, and `arrived` when each came."""

from __future__ import annotations

import threading
import time
from typing import Any

import hl7
from hl7apy.mllp import AbstractErrorHandler, MLLPServer


class _Handler(AbstractErrorHandler):  # hl7apy has no type hints: the base is Any
    """hl7apy routes by message type; with no type registered every message reaches the ERR handler,
    which is the one place that sees them all."""

    def __init__(self, exc: Exception, message: str, engine: Engine) -> None:
        super().__init__(exc, message)
        self.engine = engine

    def reply(self) -> str:
        message: str = self.incoming_message
        arrived = time.monotonic()
        parsed = hl7.parse(message)
        with self.engine.lock:
            self.engine.received.append(message)
            self.engine.arrived.append(arrived)
            self.engine.ids.append(str(parsed.segment("MSH")[10]))
            code = self.engine.answer
        ack = parsed.create_ack(ack_code=code)
        return "\x0b" + str(ack) + "\r\x1c\r"


class Engine:
    def __init__(self, answer: str = "AA", port: int = 0) -> None:
        self.answer = answer
        self.received: list[str] = []
        self.ids: list[str] = []
        """MSH-10 of each message in `received`."""
        self.arrived: list[float] = []
        """time.monotonic() when each message in `received` came (before the ACK is sent)."""
        self.lock = threading.Lock()
        self.server: Any = MLLPServer("127.0.0.1", port, {"ERR": (_Handler, self)}, timeout=10)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="hl7apy-engine")

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def control_ids(self) -> list[str]:
        with self.lock:
            return list(self.ids)
