"""The hospital systems `qlink demo` plays around the two facilities, each built on an independent library:
a modality (a pynetdicom storage SCU) sending to hospital-a's DICOM gateway, a PACS (a pynetdicom storage
SCP) behind hospital-b, an interface engine (hl7apy's MLLPServer answering with python-hl7's ACKs) behind
hospital-b, a sending engine (python-hl7's MLLPClient) at hospital-a, and a FHIR server (the standard
library's HTTP server) behind hospital-b. Each runs on 127.0.0.1 in this process, in threads it stops."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MLLP_END = b"\x1c\r"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stored:
    """One instance as the PACS received it."""

    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes
    """The data set exactly as it came over the association (no file meta)."""
    at: float
    """time.monotonic() when it arrived."""


def dataset_bytes(path: Path) -> bytes:
    """The data set of a DICOM file as a C-STORE carries it: the bytes after its file meta group."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


class Pacs:
    """A storage SCP that accepts every storage SOP class and keeps what it receives in memory."""

    def __init__(self, ae_title: str, port: int) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.ae_title = ae_title
        self.stored: list[Stored] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server: Any = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: Any) -> int:
        stored = Stored(
            sop_instance_uid=str(event.request.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            dataset=bytes(event.request.DataSet.getvalue()),
            at=time.monotonic(),
        )
        with self._lock:
            self.stored.append(stored)
        return 0x0000

    def instances(self) -> dict[str, Stored]:
        """The first copy of each instance received, by SOP Instance UID."""
        with self._lock:
            found: dict[str, Stored] = {}
            for s in self.stored:
                found.setdefault(s.sop_instance_uid, s)
            return found

    def stop(self) -> None:
        self._server.shutdown()


def c_store(port: int, called_ae: str, calling_ae: str, files: list[Path], timeout: float) -> list[int]:
    """Send `files` as a modality does, in one association: each data set as it is in its file (pynetdicom
    reads it from the path and sends it undecoded). Returns the status of each C-STORE."""
    from pydicom import dcmread
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = set()
    for path in files:
        meta = dcmread(path, stop_before_pixels=True)
        contexts.add((str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"hospital-a's DICOM gateway refused the association to {called_ae}")
    try:
        statuses = []
        for path in files:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


def mllp_send(port: int, message: bytes, timeout: float) -> bytes:
    """Send one HL7 message over MLLP as an interface engine does and return the ACK (without framing)."""
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(timeout)
        answer: bytes = client.send_message(message)
        # MLLPClient reads once; an ACK split across reads is completed here.
        while not answer.endswith(MLLP_END):
            more = client.socket.recv(65536)
            if not more:
                break
            answer += more
    return answer.strip(b"\x0b\x1c\r") + b"\r"


def _engine_handler_class() -> type:
    from hl7apy.mllp import AbstractErrorHandler

    class Handler(AbstractErrorHandler):  # hl7apy has no type hints: the base is Any
        """hl7apy routes by message type; with none registered every message reaches this handler."""

        def __init__(self, exc: Exception, message: str, engine: Engine) -> None:
            super().__init__(exc, message)
            self.engine = engine

        def reply(self) -> str:
            import hl7

            message: str = self.incoming_message
            parsed = hl7.parse(message)
            self.engine.received(str(parsed.segment("MSH")[10]), message)
            return "\x0b" + str(parsed.create_ack(ack_code="AA")) + "\r\x1c\r"

    return Handler


class Engine:
    """An interface engine: hl7apy's MLLP server, answering AA to every message and keeping them."""

    def __init__(self, port: int) -> None:
        from hl7apy.mllp import MLLPServer

        self.messages: dict[str, tuple[str, float]] = {}
        """Control ID (MSH-10) -> (message as received, time.monotonic() when it came)."""
        self._lock = threading.Lock()
        self._server: Any = MLLPServer(
            "127.0.0.1", port, {"ERR": (_engine_handler_class(), self)}, timeout=10
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="demo-engine")
        self._thread.start()

    def received(self, control_id: str, message: str) -> None:
        with self._lock:
            self.messages.setdefault(control_id, (message, time.monotonic()))

    def message(self, control_id: str) -> tuple[str, float] | None:
        with self._lock:
            return self.messages.get(control_id)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass
class FhirServer:
    """A FHIR server's POST side: answers 201 to every POST and counts them."""

    port: int
    posts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.posts.append(self.path)
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints its own summary; no access log on the terminal

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True, name="demo-fhir")
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)
