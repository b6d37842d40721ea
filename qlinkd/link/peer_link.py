"""The asyncio shell around one ``LinkConnection``: everything qlinkd runs for one peer.

Alice dials the peer's classical listener (an aiohttp websocket over mutual TLS); Bob's daemon accepts it
and hands the socket to ``accept``. Both keep a connection to the quantum-channel service. One driver task
per classical connection owns the link machine: every input (a peer frame, a channel answer, the clock)
goes through its queue, is fed to the machine, and then the driver acts on the machine's events (store,
commit, audit, metrics) before it flushes the frames those events vouch for. The protocol decisions are
all in ``link.py``; the only policy here is *when* Alice starts a round (watermarks, authentication
reserve, a pause after an aborted round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from qlinkmed.qcore.auth import ROUND_AUTH_BITS
from qlinkmed.qcore.errors import AbortReason
from qlinkmed.qlinkd.errors import FrameError, StoreError
from qlinkmed.qlinkd.link import machine as lk
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.framing import encode_length_prefixed, read_frame
from qlinkmed.qlinkd.link.persistence import persist
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.backoff import Backoff
from qlinkmed.qlinkd.pool.values import KeyNotice
from qlinkmed.qlinkd.runtime import Runtime

log = logging.getLogger("qlink.link")

EAVESDROPPER_REASONS = frozenset(
    {
        AbortReason.QBER_ABOVE_THRESHOLD,
        AbortReason.CHSH_NOT_VIOLATED,
        AbortReason.DI_RATE_NONPOSITIVE,
        AbortReason.DECOY_BOUND_EMPTY,
    }
)
"""Aborts whose statistics point at an eavesdropper on the quantum channel."""
TAMPER_REASONS = frozenset({AbortReason.AUTHENTICATION_FAILED})
"""A tag that does not verify: someone altered the classical channel. (A failed verification hash is
a residual reconciliation error, rare and honest: it aborts the round without an alarm.)"""
PAUSE_AFTER_ABORT_S = 0.5
"""Alice waits this long after an aborted round before the next, so an attack does not spin the CPU."""
RECHECK_S = 1.0
"""How often an idle link re-reads the pool level (keys handed out may have drained it)."""
RECONNECT_S = (0.1, 2.0)
"""First and longest pause between connection attempts (growing by half each time)."""
CLOSE_WAIT_S = 1.0
"""How long closing a connection waits for the peer's goodbye."""
CHANNEL_GRACE_S = 2.0
"""How long a round waits for this end's quantum-channel connection before it is given up."""


def _backoff() -> Backoff:
    return Backoff(first_s=RECONNECT_S[0], longest_s=RECONNECT_S[1], factor=1.5)


@dataclass(slots=True)
class _Input:
    kind: str
    round_id: int = 0
    message: object = None


class PeerLink:
    def __init__(self, runtime: Runtime, peer_id: str) -> None:
        self.rt = runtime
        self.peer = runtime.config.peer(peer_id)
        self.config = runtime.link_config(peer_id)
        self.role = self.config.role
        self._queue: asyncio.Queue[_Input] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse | None = None
        self._channel: asyncio.StreamWriter | None = None
        self._channel_up = asyncio.Event()
        self._paused = False
        self._resume_at = 0.0
        self.link: lk.LinkConnection | None = None
        self.rounds = {"established": 0, "aborted": 0}
        self.last_round: dict[str, Any] | None = None
        self.alarm: str | None = None
        self.starved = False
        self.first_key_at: float | None = None

    # ---- public ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._channel_loop())
            if self.role is lk.Role.ALICE:
                tg.create_task(self._dial_loop())

    async def accept(self, ws: web.WebSocketResponse) -> None:
        """Bob: a verified connection from this peer arrived; it replaces any older one."""
        if self._ws is not None:
            await self._ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"replaced by a new connection")
        await self._session(ws)

    async def close(self) -> None:
        """Shutting down: close the classical connection so the peer sees it at once."""
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError, aiohttp.ClientError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown")

    def push_notice(self, notice: KeyNotice) -> None:
        """A key was handed to a master SAE here: tell the peer (the outbox keeps it until acknowledged)."""
        if self._queue is not None:
            self._queue.put_nowait(_Input("notice", 0, notice))

    def statistics(self) -> dict[str, Any]:
        store = self.rt.store
        state = store.link_state(self.peer.id)
        return {
            "peer": self.peer.id,
            "role": self.role.value,
            "protocol": self.config.protocol.value,
            "connected": self.link is not None and self.link.state is not lk.State.CLOSED,
            "channel_connected": self._channel is not None,
            "state": self.link.state.name.lower() if self.link is not None else "disconnected",
            "pool_bits": store.pool_bits(self.peer.id),
            "pool_bits_owned": store.pool_bits(self.peer.id, owner=self.rt.config.id),
            "auth_reserve_bits": store.auth_reserve_bits(self.peer.id),
            "low_watermark_bits": self.peer.low_watermark_bits,
            "high_watermark_bits": self.peer.high_watermark_bits,
            "rounds_paused": self._paused,
            "last_committed_round": state.last_committed,
            "rounds": dict(self.rounds),
            "last_round": self.last_round,
            "alarm": self.alarm,
            "auth_starved": self.starved,
        }

    # ---- connections -------------------------------------------------------------------------------------
    async def _dial_loop(self) -> None:
        url = f"wss://{_host(self.peer.address.host)}:{self.peer.address.port}/v1/link"
        backoff = _backoff()
        async with aiohttp.ClientSession() as http:
            while True:
                _raise_if_cancelling()
                try:
                    ws = await http.ws_connect(
                        url, ssl=self.rt.client_ssl, max_msg_size=MAX_FRAME_BYTES, autoping=True, heartbeat=15
                    )
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.debug("dialling %s at %s failed: %s", self.peer.id, url, exc)
                else:
                    who = pki.peer_common_name(ws.get_extra_info("ssl_object"))
                    if who != self.peer.id:
                        log.error("refusing %s: its certificate names %r, not %r", url, who, self.peer.id)
                        await ws.close()
                    else:
                        backoff.reset()
                        await self._session(ws)
                await asyncio.sleep(backoff.delay())

    async def _channel_loop(self) -> None:
        address = self.rt.config.channel
        backoff = _backoff()
        while True:
            _raise_if_cancelling()
            try:
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, ssl=self.rt.client_ssl, server_hostname=address.host
                )
            except (OSError, TimeoutError) as exc:
                log.debug("quantum channel at %s unreachable: %s", address, exc)
            else:
                backoff.reset()
                await self._channel_session(reader, writer)
            await asyncio.sleep(backoff.delay())

    async def _channel_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = lm.ChannelHello(
            facility=self.rt.config.id,
            peer=self.peer.id,
            role=self.role.value,
            protocol=self.config.protocol.value,
        )
        writer.write(encode_length_prefixed(encode_frame(hello, 0)))
        self._channel = writer
        self._channel_up.set()
        log.info("quantum channel connected for %s", self.peer.id)
        try:
            while (data := await read_frame(reader, MAX_FRAME_BYTES)) is not None:
                round_id, message = decode_frame(data)
                if self._queue is not None:
                    self._queue.put_nowait(_Input("channel", round_id, message))
        except FrameError as exc:
            log.warning("quantum channel sent a bad frame, reconnecting: %s", exc)
        except (ConnectionError, OSError) as exc:
            log.info("quantum channel connection lost: %s", exc)
        finally:
            self._channel = None
            self._channel_up.clear()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await writer.wait_closed()

    # ---- one classical connection ------------------------------------------------------------------------
    async def _session(self, ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
        store = self.rt.store
        queue: asyncio.Queue[_Input] = asyncio.Queue()
        link = lk.LinkConnection(
            self.config,
            local=store.link_state(self.peer.id),
            auth=store.auth_store(self.peer.id),
            rng=np.random.default_rng(secrets.randbits(128)),
        )
        self._ws, self._queue, self.link = ws, queue, link
        link.start(time.monotonic())
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read_peer(ws, queue))
                await self._drive(link, ws, queue)
                reader.cancel()
        finally:
            self.rt.metrics.set_link_up(self.peer.id, False)
            if self._ws is ws:
                self._ws, self._queue = None, None
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError, aiohttp.ClientError):
                    async with asyncio.timeout(CLOSE_WAIT_S):
                        await ws.close()

    async def _read_peer(self, ws: Any, queue: asyncio.Queue[_Input]) -> None:
        reason = "peer closed the connection"
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        round_id, message = decode_frame(msg.data)
                    except FrameError as exc:
                        reason = f"malformed frame: {exc}"
                        break
                    queue.put_nowait(_Input("frame", round_id, message))
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    reason = "text message on a binary protocol"
                    break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = f"transport error: {ws.exception()}"
                    break
        finally:
            queue.put_nowait(_Input("closed", 0, reason))

    async def _drive(self, link: lk.LinkConnection, ws: Any, queue: asyncio.Queue[_Input]) -> None:
        await self._flush(link, ws)
        while link.state is not lk.State.CLOSED:
            now = time.monotonic()
            deadline = link.get_timer()
            wait = RECHECK_S if deadline is None else max(0.0, min(RECHECK_S, deadline - now))
            # Most inputs are already queued during a round: skip the timer machinery for them.
            # (asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
            # races with the queue, and a swallowed cancellation keeps a stopping daemon alive.)
            item = queue.get_nowait() if not queue.empty() else None
            if item is None:
                try:
                    async with asyncio.timeout(wait):
                        item = await queue.get()
                except TimeoutError:
                    item = None
            now = time.monotonic()
            if item is None:
                link.handle_timer(now)
            elif item.kind == "frame":
                link.receive(item.round_id, item.message, now)
            elif item.kind == "channel":
                link.channel_result(item.round_id, item.message, now)
            elif item.kind == "notice":
                if link.state is not lk.State.EXPECT_HELLO:
                    await self._send(ws, 0, item.message)
            elif item.kind == "closed":
                link.close(str(item.message))
            await self._flush(link, ws)
            if self.role is lk.Role.ALICE and link.state is lk.State.IDLE and self._may_start(now):
                link.begin_round(now)
                await self._flush(link, ws)

    def _may_start(self, now: float) -> bool:
        if self._channel is None or now < self._resume_at:
            return False
        peer_id = self.peer.id
        reserve = self.rt.store.auth_reserve_bits(peer_id)
        starved = reserve < ROUND_AUTH_BITS
        if starved != self.starved:
            self.starved = starved
            self.rt.metrics.set_auth_starved(peer_id, starved)
            if starved:
                log.error(
                    "ALARM authentication key starved on link %s: %d bits left, key generation halted",
                    peer_id,
                    reserve,
                )
                self.rt.audit.record("auth_starved", peer=peer_id, reserve_bits=reserve)
        if starved:
            return False
        pool = self.rt.store.pool_bits(peer_id)
        if self._paused and pool < self.peer.low_watermark_bits:
            self._paused = False
        elif not self._paused and pool >= self.peer.high_watermark_bits:
            self._paused = True
        return not self._paused

    async def _flush(self, link: lk.LinkConnection, ws: Any) -> None:
        # Events first: what they persist is what the frames after them promise.
        while (event := link.next_event()) is not None:
            await self._on_event(link, ws, event)
        for round_id, message in link.frames_to_send():
            await self._send(ws, round_id, message)
        for request in link.channel_requests():
            if self._channel is None:
                # Right after start-up the peer may be faster than our channel connection: give it a
                # moment rather than failing the round (which would cost both ends a pause).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHANNEL_GRACE_S):
                        await self._channel_up.wait()
            if self._channel is None:
                link.channel_result(
                    request.round_id, lm.ChannelError(reason="not connected"), time.monotonic()
                )
                await self._flush(link, ws)
                return
            self._channel.write(encode_length_prefixed(encode_frame(request.message, request.round_id)))

    async def _send(self, ws: Any, round_id: int, message: object) -> None:
        if ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.send_bytes(encode_frame(message, round_id))

    async def _on_event(self, link: lk.LinkConnection, ws: Any, event: lk.Event) -> None:
        store, peer_id = self.rt.store, self.peer.id
        now = time.monotonic()
        result = persist(store, link, peer_id, event, now)
        match event:
            case lk.HelloReceived():
                if result is None:
                    return
                self.rt.metrics.set_link_up(peer_id, True)
                log.info(
                    "link to %s up as %s (committed %s, discarded %s on reconcile)",
                    peer_id,
                    self.role.value,
                    list(result.committed),
                    list(result.discarded),
                )
                self.rt.audit.record(
                    "link_up",
                    peer=peer_id,
                    committed=list(result.committed),
                    discarded=list(result.discarded),
                )
                for notice in store.outbox(peer_id):
                    await self._send(ws, 0, notice)
            case lk.RoundEnded():
                self._round_ended(event)
            case lk.NoticeReceived(notice=notice):
                try:
                    store.accept_notice(peer_id, notice)
                except StoreError as exc:
                    log.error(
                        "ALARM key notice %s from %s does not match our pool: %s", notice.key_id, peer_id, exc
                    )
                    self.rt.audit.record(
                        "pool_divergence", peer=peer_id, key_id=notice.key_id, detail=str(exc)
                    )
                else:
                    self.rt.kme_notice_arrived()
                    await self._send(ws, 0, lm.NoticeAck(key_id=notice.key_id))
            case lk.LinkClosed(reason=reason):
                log.warning("link to %s closed: %s", peer_id, reason)
                self.rt.audit.record("link_down", peer=peer_id, reason=reason)

    def _evidence_of_eavesdropper(self, event: lk.RoundEnded) -> bool:
        """An abort on the statistics raises the alarm when the measured QBER or CHSH value itself is
        past the threshold. When only the finite-size bound is (a round too small for its noise), the
        round still ends without key, but that is a configuration matter, not evidence of an attack."""
        stats = event.outcome.statistics if event.outcome is not None else None
        if stats is None or event.reason is AbortReason.DECOY_BOUND_EMPTY:
            return True  # no own measurement to weigh (or PNS, which only the decoy yields reveal)
        return _point_estimate_crosses(stats, self.config.distill.qber_tolerance)

    def _round_ended(self, event: lk.RoundEnded) -> None:
        peer_id = self.peer.id
        outcome = event.outcome
        stats = outcome.statistics if outcome is not None else None
        duration = event.ended_at - event.started_at
        key_bits = outcome.final_key_bits if (outcome is not None and event.established) else 0
        record: dict[str, Any] = {
            "round": event.round_id,
            "established": event.established,
            "reason": event.reason.name.lower(),
            "detail": event.detail[:300],
            "duration_s": round(duration, 4),
            "qber": None if stats is None else stats.qber,
            "qber_upper": None if stats is None else stats.qber_upper,
            "chsh_s": None if stats is None else stats.chsh_s,
            "raw_key_bits": 0 if outcome is None else outcome.raw_key_bits,
            "leaked_ec_bits": 0 if outcome is None else outcome.leaked_ec_bits,
            "final_key_bits": key_bits,
            "round_trips": 0 if outcome is None else outcome.round_trips,
        }
        self.last_round = record
        self.rounds["established" if event.established else "aborted"] += 1
        metrics = self.rt.metrics
        alarming = not event.established and (
            event.reason in TAMPER_REASONS
            or (event.reason in EAVESDROPPER_REASONS and self._evidence_of_eavesdropper(event))
        )
        if event.established:
            metrics.round_established(
                peer_id,
                duration_s=duration,
                final_key_bits=key_bits,
                qber=record["qber"],
                chsh_s=record["chsh_s"],
            )
        else:
            metrics.round_aborted(
                peer_id,
                reason=event.reason,
                duration_s=duration,
                eavesdropper_suspected=alarming,
                qber=record["qber"],
                chsh_s=record["chsh_s"],
            )
        metrics.set_pool(
            peer_id,
            pool_bits=self.rt.store.pool_bits(peer_id),
            auth_reserve_bits=self.rt.store.auth_reserve_bits(peer_id),
        )
        self.rt.audit.record(
            "round_" + ("established" if event.established else "aborted"),
            peer=peer_id,
            **{k: v for k, v in record.items() if k != "detail"},
            detail=event.detail[:300],
        )
        if event.established:
            if self.first_key_at is None:
                self.first_key_at = time.monotonic()
            if self.alarm is not None:
                log.warning("alarm cleared on link %s: round %d established", peer_id, event.round_id)
                self.rt.audit.record("alarm_cleared", peer=peer_id, round=event.round_id)
            self.alarm = None
            log.info(
                "round %d with %s: %d bits, QBER %.4f, %.3f s",
                event.round_id,
                peer_id,
                key_bits,
                record["qber"] or 0.0,
                duration,
            )
            return
        self._resume_at = time.monotonic() + PAUSE_AFTER_ABORT_S
        if alarming:
            self.alarm = event.reason.name.lower()
            log.error(
                "ALARM round %d with %s aborted (%s): %s; no key kept",
                event.round_id,
                peer_id,
                self.alarm,
                event.detail[:200],
            )
        else:
            log.warning(
                "round %d with %s aborted (%s): %s",
                event.round_id,
                peer_id,
                event.reason.name.lower(),
                event.detail[:200],
            )


def _point_estimate_crosses(stats: Any, tolerance: float) -> bool:
    """Whether the measured value itself (not only its finite-size bound) is beyond the threshold."""
    if stats.chsh_s is not None:
        return bool(stats.chsh_s <= 2.0 or stats.qber > tolerance)
    return bool(stats.qber > tolerance)


def _raise_if_cancelling() -> None:
    # A library that turns a cancellation into one of the connection errors these loops retry on would
    # keep a stopping daemon alive; the task's own record of it is authoritative.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
