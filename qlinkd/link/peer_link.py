"""The asyncio shell around one ``LinkConnection``: everything qlinkd runs for one peer.

Alice dials the peer's classical listener (an aiohttp websocket over mutual TLS); Bob's daemon accepts it
and hands the socket to ``accept``. Both keep a connection to the quantum-channel service. One driver task
per classical connection owns the link machine: every input (a peer frame, a channel answer, a key notice
to send, the clock) goes through its queue and is fed to the machine; the driver then acts on the
machine's events (persist, log, audit, metrics) before it flushes the frames those events vouch for, and
re-arms its one timer. Protocol decisions are the machine's (``machine.py``), policy decisions (when to
start a round, what an abort means, what a round leaves on record) are ``policy.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from qlinkmed.qlinkd.errors import FrameError, StoreError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link import policy
from qlinkmed.qlinkd.link.anchor import AnchorSession
from qlinkmed.qlinkd.link.channel_client import CLOSE_WAIT_S, ChannelClient, backoff
from qlinkmed.qlinkd.link.events import Event, HelloReceived, LinkClosed, NoticeReceived, RoundEnded
from qlinkmed.qlinkd.link.machine import LinkConnection
from qlinkmed.qlinkd.link.persistence import persist
from qlinkmed.qlinkd.link.reporting import LinkReporter
from qlinkmed.qlinkd.link.states import Role, State
from qlinkmed.qlinkd.link.status import LinkStatus
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import entropy, pki
from qlinkmed.qlinkd.ops.backoff import raise_if_cancelling
from qlinkmed.qlinkd.pool.values import KeyNotice
from qlinkmed.qlinkd.runtime import Runtime

log = logging.getLogger("qlink.link")

RECHECK_S = 1.0
"""How often an idle link re-reads the pool level (keys handed out may have drained it)."""
CHANNEL_GRACE_S = 2.0
"""How long a round waits for this end's quantum-channel connection before it is given up."""

WebSocket = aiohttp.ClientWebSocketResponse | web.WebSocketResponse


@dataclass(frozen=True, slots=True)
class _FromPeer:
    round_id: int
    message: lm.WireMessage


@dataclass(frozen=True, slots=True)
class _FromChannel:
    round_id: int
    message: lm.WireMessage


@dataclass(frozen=True, slots=True)
class _NoticeOut:
    notice: KeyNotice


@dataclass(frozen=True, slots=True)
class _Closed:
    reason: str


@dataclass(frozen=True, slots=True)
class _AnchorNow:
    answered: asyncio.Future[bool]


_Input = _FromPeer | _FromChannel | _NoticeOut | _Closed | _AnchorNow


class PeerLink:
    def __init__(self, runtime: Runtime, peer_id: str) -> None:
        self.rt = runtime
        self.peer = runtime.config.peer(peer_id)
        self.config = runtime.link_config(peer_id)
        self.role = self.config.role
        self._queue: asyncio.Queue[_Input] | None = None
        self._ws: WebSocket | None = None
        hello = lm.ChannelHello(
            facility=runtime.config.id,
            peer=peer_id,
            role=self.role.value,
            protocol=self.config.protocol.value,
        )
        self.channel = ChannelClient(
            runtime.config.channel,
            runtime.client_ssl,
            hello,
            self._channel_answer,
            on_refused=lambda: runtime.metrics.identity_refused_on_dial(peer_id, "channel"),
        )
        self._gate = policy.StartGate()
        self.link: LinkConnection | None = None
        self._anchor_waiters: list[tuple[int, asyncio.Future[bool]]] = []
        """(requests this connection must have had answered, the future that waits for it)"""
        self.report = LinkReporter(runtime, peer_id, role=self.role.value, distill=self.config.distill)

    # ---- public ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.channel.run())
            if self.role is Role.ALICE:
                tg.create_task(self._dial_loop())

    async def accept(self, ws: web.WebSocketResponse) -> None:
        """Bob: a verified connection from this peer arrived; it replaces any older one."""
        if self._ws is not None:
            await self._ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"replaced by a new connection")
        await self._session(ws)

    async def close(self) -> None:
        """Shutting down: close the classical connection so the peer sees it at once."""
        if self._ws is not None and not self._ws.closed:
            await _close_quietly(self._ws, b"shutdown")

    def push_notice(self, notice: KeyNotice) -> None:
        """A key was handed to a master SAE here: tell the peer (the outbox keeps it until acknowledged)."""
        if self._queue is not None:
            self._queue.put_nowait(_NoticeOut(notice))

    async def anchor_now(self, timeout: float) -> bool:
        """Exchange audit anchors with the peer now (``anchor.py``): True once its answer arrived (and
        ``rt.anchors`` holds what it keeps of our head), False when it is not connected or did not answer
        within `timeout`."""
        if self._queue is None:
            return False
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_AnchorNow(answered))
        try:
            async with asyncio.timeout(timeout):
                return await answered
        except TimeoutError:
            return False

    def statistics(self) -> LinkStatus:
        store, peer_id, link = self.rt.store, self.peer.id, self.link
        return LinkStatus(
            peer=peer_id,
            role=self.role.value,
            protocol=policy.protocol_name(self.config.distill),
            decoy=policy.source_status(self.config.distill),
            eps_sec=self.config.distill.eps_sec,
            eps_cor=self.config.distill.eps_cor,
            eps=self.config.distill.eps,
            connected=link is not None and link.state is not State.CLOSED,
            channel_connected=self.channel.connected,
            state=link.state.name.lower() if link is not None else "disconnected",
            pool_bits=store.pool_bits(peer_id),
            pool_bits_owned=store.pool_bits(peer_id, owner=self.rt.config.id),
            auth_reserve_bits=store.auth_reserve_bits(peer_id),
            low_watermark_bits=self.peer.low_watermark_bits,
            high_watermark_bits=self.peer.high_watermark_bits,
            rounds_paused=self._gate.paused,
            last_committed_round=store.link_state(peer_id).last_committed,
            rounds=self.report.rounds,
            last_round=self.report.last_round,
            alarm=self.report.alarm,
            auth_starved=self._gate.starved,
            rounds_in_flight=0 if link is None or link.state is State.CLOSED else len(link.open_rounds),
            rounds_window=self.config.rounds_in_flight,
            down_since=self.report.down_since_iso(),
            down_reason=self.report.down_reason,
        )

    # ---- connections -------------------------------------------------------------------------------------
    async def _dial_loop(self) -> None:
        url = f"wss://{_host(self.peer.address.host)}:{self.peer.address.port}/v1/link"
        pauses = backoff()
        async with aiohttp.ClientSession() as http:
            while True:
                raise_if_cancelling()
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
                        pauses.reset()
                        await self._session(ws)
                await asyncio.sleep(pauses.delay())

    def _channel_answer(self, round_id: int, message: lm.WireMessage) -> None:
        if self._queue is not None:
            self._queue.put_nowait(_FromChannel(round_id, message))

    # ---- one classical connection ------------------------------------------------------------------------
    async def _session(self, ws: WebSocket) -> None:
        store = self.rt.store
        queue: asyncio.Queue[_Input] = asyncio.Queue()
        link = LinkConnection(
            self.config,
            local=store.link_state(self.peer.id),
            auth=store.auth_store(self.peer.id),
            randomness=entropy.party_randomness(),
        )
        self._ws, self._queue, self.link = ws, queue, link
        link.start(time.monotonic())
        anchors = AnchorSession(self.rt.anchors, self.peer.id, time.monotonic())
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read_peer(ws, queue))
                await self._drive(link, ws, queue, anchors)
                reader.cancel()
        finally:
            self.rt.metrics.set_link_up(self.peer.id, False)
            if self._ws is ws:
                self._ws, self._queue = None, None
                self._answer_anchor_waiters(None)
            if not ws.closed:
                await _close_quietly(ws)

    async def _read_peer(self, ws: WebSocket, queue: asyncio.Queue[_Input]) -> None:
        reason = "peer closed the connection"
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        round_id, message = decode_frame(msg.data)
                    except FrameError as exc:
                        reason = f"malformed frame: {exc}"
                        break
                    queue.put_nowait(_FromPeer(round_id, message))
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    reason = "text message on a binary protocol"
                    break
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = f"transport error: {ws.exception()}"
                    break
        finally:
            queue.put_nowait(_Closed(reason))

    async def _drive(
        self, link: LinkConnection, ws: WebSocket, queue: asyncio.Queue[_Input], anchors: AnchorSession
    ) -> None:
        await self._flush(link, ws)
        await _send_anchors(ws, [anchors.opening()])
        while link.state is not State.CLOSED:
            deadline = link.get_timer()
            wait = RECHECK_S if deadline is None else max(0.0, min(RECHECK_S, deadline - time.monotonic()))
            # Most inputs are already queued during a round: skip the timer machinery for them.
            # (asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
            # races with the queue, and a swallowed cancellation keeps a stopping daemon alive.)
            item = queue.get_nowait() if not queue.empty() else None
            if item is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        item = await queue.get()
            now = time.monotonic()
            match item:
                case None:
                    link.handle_timer(now)
                case _FromPeer(message=lm.AuditAnchor() as anchor):
                    # Beside the link machine: anchors decide nothing about keys.
                    await _send_anchors(ws, anchors.receive(anchor, now))
                    self._answer_anchor_waiters(anchors.replies_received)
                case _AnchorNow(answered=answered):
                    request = anchors.request(now)
                    self._anchor_waiters.append((anchors.requests_sent, answered))
                    await _send_anchors(ws, [request])
                case _FromPeer(round_id=round_id, message=message):
                    link.receive(round_id, message, now)
                case _FromChannel(round_id=round_id, message=message):
                    link.channel_result(round_id, message, now)
                case _NoticeOut(notice=notice):
                    link.send_notice(notice)
                case _Closed(reason=reason):
                    link.close(reason)
            await self._flush(link, ws)
            await _send_anchors(ws, anchors.poll(now))
            began = False
            while (
                self.role is Role.ALICE and link.window_open and self._may_start(now, len(link.open_rounds))
            ):
                link.begin_round(now)
                began = True
            if began:
                await self._flush(link, ws)

    def _answer_anchor_waiters(self, replies: int | None) -> None:
        """Wake the waiters whose request is answered (the peer answers in order); all, unanswered, when
        the connection ended (`replies` None)."""
        waiting = []
        for needed, waiter in self._anchor_waiters:
            if replies is not None and needed > replies:
                waiting.append((needed, waiter))
            elif not waiter.done():
                waiter.set_result(replies is not None)
        self._anchor_waiters = waiting

    def _may_start(self, now: float, rounds_open: int) -> bool:
        store, peer_id = self.rt.store, self.peer.id
        levels = policy.PoolLevels(
            pool_bits=store.pool_bits(peer_id),
            auth_reserve_bits=store.auth_reserve_bits(peer_id),
            low_watermark_bits=self.peer.low_watermark_bits,
            high_watermark_bits=self.peer.high_watermark_bits,
        )
        decision = policy.round_start(
            self._gate, levels, channel_up=self.channel.connected, now=now, rounds_open=rounds_open
        )
        if decision.gate.starved != self._gate.starved:
            self.report.starvation(decision.gate.starved, levels.auth_reserve_bits)
        self._gate = decision.gate
        return decision.start

    async def _flush(self, link: LinkConnection, ws: WebSocket) -> None:
        # Events first: what they persist is what the frames after them promise.
        while (event := link.next_event()) is not None:
            self._on_event(link, event)
        for round_id, message in link.frames_to_send():
            if ws.closed:
                break
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await ws.send_bytes(encode_frame(message, round_id))
        for request in link.channel_requests():
            # Right after start-up the peer may be faster than our channel connection: give it a moment
            # rather than failing the round (which would cost both ends a pause).
            if not self.channel.connected:
                await self.channel.wait_connected(CHANNEL_GRACE_S)
            if not self.channel.submit(request):
                now = time.monotonic()
                link.channel_result(request.round_id, lm.ChannelError(reason="not connected"), now)
                await self._flush(link, ws)
                return

    def _on_event(self, link: LinkConnection, event: Event) -> None:
        try:
            result = persist(self.rt.store, link, self.peer.id, event, time.monotonic())
        except StoreError as exc:
            if not isinstance(event, NoticeReceived):
                raise
            self.report.notice_refused(event.notice.key_id, exc)  # not acknowledged: never carved
            return
        match event:
            case HelloReceived() if result is not None:
                self.report.link_up(result)
            case RoundEnded():
                self.report.round_ended(event)
                self._gate = policy.after_round(
                    self._gate, established=event.established, now=time.monotonic()
                )
            case NoticeReceived():
                self.rt.kme_notice_arrived()
            case LinkClosed(reason=reason):
                self.report.link_down(reason)


async def _send_anchors(ws: WebSocket, anchors: list[lm.AuditAnchor]) -> None:
    for anchor in anchors:
        if ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.send_bytes(encode_frame(anchor, 0))


async def _close_quietly(ws: WebSocket, going_away: bytes | None = None) -> None:
    """Close `ws` (as going away, with that message, when given), waiting at most CLOSE_WAIT_S."""
    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(CLOSE_WAIT_S):
            if going_away is None:
                await ws.close()
            else:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=going_away)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
