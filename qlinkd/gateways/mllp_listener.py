"""The HL7 v2 listener of one facility: MLLP over TCP from the hospital's interface engine, each message
validated by the daemon's content validator (the same rules as `qlink ehr send`), routed by MSH-5/MSH-6
to a peer facility, queued in the data plane and acknowledged AA (or CA) only once queue_ehr has made it
durable; AE/AR (CE/CR) with an ERR segment naming the problem otherwise.

Connections are long-lived; each is served by its own task, one message at a time and in order (the next
frame is read only after the previous one is answered), so a sender's order is the queue's order. A
connection silent for `idle_timeout_s` (including one stalled inside a frame) is closed; an oversized
frame is answered AR and its bytes dropped as they come (the decoder's buffer is bounded); garbage
between frames is skipped, and a connection that sends more than GARBAGE_LIMIT bytes of it without a frame
is closed; beyond `max_connections` open at once a new connection is closed at once (memory stays within
max_connections x max_message_bytes). Nothing a peer sends blocks another connection or the event loop:
validation runs in the validator's worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import sqlite3
import uuid
from dataclasses import dataclass

from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, TransferKind
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ContentError, FrameError, QlinkdError
from qlinkmed.qlinkd.gateways.hl7_ack import (
    Header,
    Hl7Error,
    Outcome,
    Problem,
    ack_code,
    build_ack,
    parse_header,
    problem_of,
)
from qlinkmed.qlinkd.gateways.mllp_config import MllpConfig
from qlinkmed.qlinkd.gateways.mllp_framing import (
    BytesSkipped,
    FrameAbandoned,
    FrameEvent,
    FrameOversized,
    MessageFramed,
    MllpDecoder,
    encode,
)

log = logging.getLogger("qlink.gateway")

READ_BYTES = 1 << 16
GARBAGE_LIMIT = 1 << 16
"""Bytes outside any frame a connection may send before it is closed (an HTTP client, a port scan)."""
WRITE_TIMEOUT_S = 30.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: Outcome
    problem: Problem | None
    transfer_id: str | None = None
    quotes_content: bool = False
    """The problem's text comes from the content rules and may quote the message (patient data): it goes
    back to the sender in the ACK, never to the log or the status."""


def _summary(answer: Answer) -> str:
    problem = answer.problem
    if problem is None:
        return "?"
    where = "^".join(map(str, problem.location)) if problem.location else ""
    code = f"{int(problem.code)} {problem.code.name.lower().replace('_', ' ')}" + (
        f" at {where}" if where else ""
    )
    return code if answer.quotes_content else f"{code}: {problem.text}"


@dataclass(slots=True)
class ListenerCounters:
    connections_open: int = 0
    accepted: int = 0
    refused: int = 0
    last_error: str | None = None


def message_name(header: Header) -> str:
    """The inbox name of a message: its control ID made safe for a file name."""
    control = _SAFE_NAME.sub("_", header.control_id)[:64]
    return f"{control or 'message'}.hl7"


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


class MllpListener:
    def __init__(self, config: MllpConfig, plane: DataPlane, validator: ContentValidator) -> None:
        self._config = config
        self._plane = plane
        self._validator = validator
        self._server: asyncio.Server | None = None
        self.counters = ListenerCounters()
        self.address: str | None = None

    async def start(self) -> int:
        """Bind the configured address; the port bound (for port 0)."""
        listen = self._config.listen
        if listen is None:
            raise QlinkdError("the MLLP gateway has no listen address")
        self._server = await asyncio.start_server(self._serve, listen.host, listen.port, limit=READ_BYTES)
        port = int(self._server.sockets[0].getsockname()[1])
        self.address = f"{listen.host}:{port}"
        log.info("HL7 MLLP listener on %s", self.address)
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # ---- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if self.counters.connections_open >= self._config.max_connections:
            log.warning(
                "MLLP connection from %s refused: %d already open", where, self.counters.connections_open
            )
            self._error(f"{where}: refused, {self.counters.connections_open} connections already open")
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        self.counters.connections_open += 1
        try:
            await self._converse(reader, writer, where)
        except asyncio.CancelledError:
            # The daemon is stopping; the stream callback calls exception() on this task (see data plane).
            log.info("MLLP connection from %s closed: daemon stopping", where)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("MLLP connection from %s lost: %s", where, exc)
        except Exception:
            # A bug of ours, not the peer's doing: log it whole, keep serving the others.
            log.exception("MLLP connection from %s failed", where)
        finally:
            self.counters.connections_open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str) -> None:
        decoder = MllpDecoder(self._config.max_message_bytes)
        garbage = 0
        while True:
            try:
                async with asyncio.timeout(self._config.idle_timeout_s):
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                state = "inside a frame" if decoder.buffered else "idle"
                log.info(
                    "MLLP connection from %s closed: %s for %g s", where, state, self._config.idle_timeout_s
                )
                self._error(f"{where}: closed after {self._config.idle_timeout_s:g} s {state}")
                return
            if not data:
                try:
                    decoder.eof()
                except FrameError as exc:
                    log.warning("MLLP connection from %s: %s", where, exc)
                    self._error(f"{where}: {exc}")
                return
            for event in decoder.feed(data):
                if isinstance(event, BytesSkipped):
                    if not event.blank:
                        garbage += event.count
                        if garbage > GARBAGE_LIMIT:
                            log.warning(
                                "MLLP connection from %s closed: %d bytes outside any frame", where, garbage
                            )
                            self._error(f"{where}: closed after {garbage} bytes outside any MLLP frame")
                            return
                    continue
                garbage = 0
                reply = await self._answer_event(event, where)
                if reply is not None:
                    writer.write(encode(reply))
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await writer.drain()

    async def _answer_event(self, event: FrameEvent, where: str) -> bytes | None:
        if isinstance(event, FrameAbandoned):
            # No whole message to answer: the sender waits for an ACK that never comes and sends again.
            log.warning("MLLP frame from %s had no end block (%d bytes dropped)", where, event.size)
            self._error(f"{where}: a frame of {event.size} bytes had no end block")
            return None
        if isinstance(event, FrameOversized):
            header = parse_header(event.head)
            problem = Problem(
                code=Hl7Error.APPLICATION_INTERNAL_ERROR,
                text=f"message of {event.size} bytes exceeds this gateway's limit of {event.limit} bytes",
            )
            answer = Answer(Outcome.REJECT, problem)
        elif isinstance(event, MessageFramed):
            header = parse_header(event.message)
            answer = await self._take(event.message, header)
        else:
            return None
        if answer.outcome is Outcome.ACCEPT:
            self.counters.accepted += 1
        else:
            self.counters.refused += 1
            problem_text = _summary(answer)
            control = header.control_id if header else "?"
            log.warning(
                "HL7 message %s from %s not accepted (%s): %s",
                control,
                where,
                answer.outcome.value,
                problem_text,
            )
            self._error(f"{where}: message {control}: {problem_text}")
        if header is not None and ack_code(header, answer.outcome) is None:
            return None  # enhanced mode, and MSH-15 asked for no commit ACK in this case
        return build_ack(
            header,
            answer.outcome,
            control_id=uuid.uuid4().hex[:20],
            timestamp=_timestamp(),
            problem=answer.problem,
        )

    async def _take(self, message: bytes, header: Header | None) -> Answer:
        """Validate, route and queue one message; the answer says how it went."""
        if header is None:
            problem = Problem(
                code=Hl7Error.SEGMENT_SEQUENCE, text="the message does not start with an MSH segment"
            )
            return Answer(Outcome.REJECT, problem)
        name = message_name(header)
        try:
            info = await self._validator.validate(name, message)
        except ContentError as exc:
            return Answer(Outcome.ERROR, problem_of(exc), quotes_content=True)
        except Exception as exc:  # the validator's workers failing is our problem, not the message's
            log.exception("validating HL7 message %s failed", header.control_id)
            problem = Problem(
                code=Hl7Error.APPLICATION_INTERNAL_ERROR, text=f"cannot validate now: {type(exc).__name__}"
            )
            return Answer(Outcome.ERROR, problem)
        if info.kind.value != "hl7":
            problem = Problem(
                code=Hl7Error.UNSUPPORTED_MESSAGE_TYPE,
                text=f"not an HL7 v2 message (the content is {info.kind.value})",
            )
            return Answer(Outcome.REJECT, problem)
        application = header.component(header.receiving_application)
        facility = header.component(header.receiving_facility)
        route = self._config.route(application, facility)
        if route is None:
            problem = Problem(
                code=Hl7Error.TABLE_VALUE_NOT_FOUND,
                text=f"no route for receiving application {application!r} at facility {facility!r}"
                " (MSH-5/MSH-6)",
                location=("MSH", 1, 6 if application else 5),
            )
            return Answer(Outcome.REJECT, problem)
        try:
            entry = FileEntry(name, len(message), info.sha256, "hl7")
            manifest = self._plane.new_manifest(route.peer, TransferKind.EHR, (entry,))
            # Returns once the message is committed in the records: durable. Only then the AA.
            self._plane.queue_ehr(manifest, message)
        except (OSError, sqlite3.Error, QlinkdError) as exc:
            log.error("HL7 message %s could not be queued: %s", header.control_id, exc)
            problem = Problem(
                code=Hl7Error.APPLICATION_INTERNAL_ERROR, text=f"cannot store the message: {exc}"
            )
            return Answer(Outcome.ERROR, problem)
        # Nobody waits here for the peer's delivery: the forwarder at the far end reports that.
        self._plane.forget_waiter(manifest.transfer_id)
        return Answer(Outcome.ACCEPT, None, manifest.transfer_id)

    def _error(self, text: str) -> None:
        self.counters.last_error = text[:500]
