"""The data plane of one facility daemon: the mutual-TLS listener that receives from peers, one sender
task per peer that dials it whenever the outbox holds work for it, and the bookkeeping the local API
reads (queue, inbox, waiters for "delivered", each peer's last session and whether it used the
post-quantum hybrid). Every session whose traffic keys are derived is one ``data_session`` audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.access.departments import DepartmentRules
from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.inbox import Inbox
from qlinkmed.qlinkd.dataplane.keys import KEM_NAME, KeySource, SessionKeyed, source_name
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.outbox import Outbox, Upload
from qlinkmed.qlinkd.dataplane.receiver import ReceiverContext, ReceiverSession
from qlinkmed.qlinkd.dataplane.records import Outgoing, TransferRecords
from qlinkmed.qlinkd.dataplane.rest_keys import RestKeys
from qlinkmed.qlinkd.dataplane.sender import SenderContext, SenderSession
from qlinkmed.qlinkd.errors import (
    FrameError,
    HybridUnavailable,
    InsufficientKey,
    QlinkdError,
    Rejected,
    RekeyRequired,
    SessionClosed,
    TransferError,
)
from qlinkmed.qlinkd.link.status import DataPeerStatus, DataSession
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.audit import AuditLog, rfc3339
from qlinkmed.qlinkd.ops.backoff import RECONNECT_JITTER, Backoff, raise_if_cancelling
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.seal.hybrid import hybrid_available

log = logging.getLogger("qlink.data")

RECONNECT_S = (0.05, 2.0)
RECORDS_FILE = "transfers.sqlite3"


@dataclass(frozen=True, slots=True)
class Outcome:
    state: Outgoing
    reason: str | None
    finished: float


class DataPlane:
    def __init__(
        self,
        *,
        facility: str,
        state_dir: Path,
        peers: dict[str, Address | None],
        keys: KeySource,
        client_ssl: ssl.SSLContext,
        server_ssl: ssl.SSLContext,
        audit: AuditLog,
        metrics: LinkMetrics,
        pq_hybrid: Collection[str] = (),
        validator: ContentValidator | None = None,
        departments: DepartmentRules | None = None,
        rest_keys: RestKeys | None = None,
        inbox_dir: Path | None = None,
    ) -> None:
        """`pq_hybrid`: the peers whose sessions mix an ML-KEM-768 secret into every traffic key (their
        daemons must say the same of this facility). HybridUnavailable if the installed cryptography has
        no ML-KEM (the configuration check says so first). `departments`: the facility's `[departments]`,
        naming the department of every arrival in the inbox listing. `rest_keys`: the key store's keys of
        EHR messages at rest (None: kept in their records, as before it held them). `inbox_dir`: the
        operator's ``[inbox] dir`` (None: state_dir/inbox)."""
        unknown = sorted(set(pq_hybrid) - set(peers))
        if unknown:
            raise UsageError(f"pq_hybrid names {unknown}, which are no peers of this facility")
        if pq_hybrid and not hybrid_available():
            raise HybridUnavailable(
                f"pq_hybrid is on for {sorted(pq_hybrid)}, "
                "but the installed cryptography provides no ML-KEM-768"
            )
        self._pq_hybrid = frozenset(pq_hybrid)
        self._last_session: dict[str, DataSession] = {}
        self.failing_since: dict[str, float] = {}
        """Per peer: since when (wall time) its sender fails to reach it or keep a session; gone once a
        session with it is keyed again. Status shows it beside the sender's state."""
        self.facility = facility
        self.records = TransferRecords.open(state_dir / RECORDS_FILE)
        self.outbox = Outbox(state_dir / "outbox")
        self.inbox = Inbox(
            inbox_dir or state_dir / "inbox",
            self.records,
            facility=facility,
            validator=validator,
            rest_keys=rest_keys,
            operator_dir=inbox_dir is not None,
            departments=departments,
        )
        self._peers = peers
        self._keys = keys
        self._client_ssl = client_ssl
        self._server_ssl = server_ssl
        self._audit = audit
        self._metrics = metrics
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._finishing: dict[str, asyncio.Task[tuple[bool, str] | None]] = {}
        self._work: asyncio.TaskGroup | None = None
        """The group of ``run_senders``, which also holds the receivers' work that outlives a connection."""
        self._senders = {
            peer: SenderContext(
                facility=facility,
                peer=peer,
                keys=keys,
                records=self.records,
                outbox=self.outbox,
                wake=asyncio.Event(),
                on_finished=self._finished,
                on_otp_fallback=self._otp_fallback,
                hybrid=peer in self._pq_hybrid,
                on_session=self._session_keyed,
            )
            for peer in peers
        }
        queued = {m.transfer_id for p in peers for m in self.records.queued(p)}
        for removed in self.outbox.tidy(queued):
            log.info("outbox: removed %s, an upload the client was never told was queued", removed)
        self._server: asyncio.Server | None = None
        self._arrival_listeners: list[Callable[[Manifest], None]] = []

    def add_arrival_listener(self, listener: Callable[[Manifest], None]) -> None:
        """Call `listener` with the manifest of every transfer delivered into this facility's inbox, once
        the inbox holds it durably (the gateways' forwarders). A listener must not block; what it raises
        is logged and does not disturb the delivery."""
        self._arrival_listeners.append(listener)

    def close(self) -> None:
        self.inbox.close_all()
        self.records.close()

    # ---- serving

    async def start(self, listen: Address) -> int:
        self._server = await asyncio.start_server(
            self._accept, listen.host, listen.port, ssl=self._server_ssl, limit=1 << 21
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def run_senders(self) -> None:
        """The data plane's own tasks, until cancelled: one sender loop per peer with a data address, and
        the receiving connections' work that outlives them (storing finished transfers at rest)."""
        async with asyncio.TaskGroup() as tg:
            self._work = tg
            try:
                for peer, address in self._peers.items():
                    if address is not None:
                        tg.create_task(self._sender_loop(peer, address))
                await asyncio.get_running_loop().create_future()  # the group stays open for that work
            finally:
                self._work = None

    async def _sender_loop(self, peer: str, address: Address) -> None:
        ctx = self._senders[peer]
        backoff = Backoff(first_s=RECONNECT_S[0], longest_s=RECONNECT_S[1], jitter=RECONNECT_JITTER)
        standby = False
        while True:
            raise_if_cancelling()
            if not standby and not self.records.queued(peer):
                ctx.state = "idle"
                await ctx.wake.wait()
            standby = False  # set again only by a session that ends idle
            try:
                reader, writer = await asyncio.open_connection(
                    address.host,
                    address.port,
                    ssl=self._client_ssl,
                    server_hostname=address.host,
                    limit=1 << 21,
                )
            except (OSError, ssl.SSLError) as exc:
                ctx.state = f"cannot reach {address}: {exc}"
                self.failing_since.setdefault(peer, time.time())
                await asyncio.sleep(backoff.delay())
                continue
            who = pki.peer_common_name(writer.transport)
            if who != peer:
                # Checked before the session takes its key: an impostor's address (any certificate of the
                # deployment's CA carries a valid hostname) costs retries, never key material.
                ctx.state = f"refused {address}: its certificate names {who!r}, not {peer!r}"
                self.failing_since.setdefault(peer, time.time())
                log.error("data receiver at %s is not %s: its certificate names %r", address, peer, who)
                self._metrics.identity_refused_on_dial(peer, "data")
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                await asyncio.sleep(backoff.delay())
                continue
            writer.transport.set_write_buffer_limits(high=8 << 20)
            try:
                await SenderSession(ctx, reader, writer).run()
                backoff.reset()
                # The session ended idle, its key due for replacement. Open the next one now, so the next
                # message does not wait for a handshake and a session key: 256 bits of key every
                # REKEY_AFTER_SECONDS while idle. If the peer cannot be reached, wait for work instead.
                standby = True
            except (SessionClosed, QlinkdError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                ctx.state = f"last session failed: {exc}"
                self.failing_since.setdefault(peer, time.time())
                log.warning("data session to %s ended: %s", peer, exc)
                await asyncio.sleep(backoff.delay())
            except Exception as exc:
                # A defect of ours (the soak found one: a RecursionError) ends this session, not the daemon:
                # the queue is durable, so the next session resumes it; the traceback says what to fix.
                ctx.state = f"last session failed on an internal error: {type(exc).__name__}: {exc}"
                log.exception("data session to %s failed on an internal error", peer)
                await asyncio.sleep(backoff.delay())
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = pki.peer_common_name(writer.transport)
        try:
            if peer not in self._peers:
                log.warning("data connection refused: certificate %r is no configured peer", peer)
                return
            ctx = ReceiverContext(
                facility=self.facility,
                keys=self._keys,
                inbox=self.inbox,
                on_delivered=self._delivered_here,
                on_refused=self._refused_here,
                on_bytes=lambda n: self._metrics.data_bytes(peer, "in", n),
                finishing=self._finishing,
                work=self._work,
                hybrid=peer in self._pq_hybrid,
                on_session=self._session_keyed,
                on_ehr_at_rest=self._ehr_at_rest,
            )
            await ReceiverSession(ctx, peer, reader, writer).run()
        except Rejected as exc:
            log.warning("data frame from %s rejected (%s): %s", peer, exc.reason, exc.message)
            self._audit.record("data_frame_rejected", peer=peer, reason=exc.reason, detail=exc.message)
            self._metrics.data_rejected(str(peer), exc.reason)
        except RekeyRequired as exc:
            # Our traffic key reached its age or volume limit while the sender still had work on this
            # connection (a slow, loaded host): the key is not used further; the sender opens a new
            # session and resends what was not answered, which the inbox answers from its records.
            log.info("data connection from %s closed: %s; the sender opens a new session", peer, exc)
        except (FrameError, TransferError) as exc:
            log.warning("data connection from %s closed: %s", peer, exc)
            self._audit.record("data_frame_rejected", peer=peer, reason="malformed", detail=str(exc))
            self._metrics.data_rejected(str(peer), "malformed")
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("data connection from %s lost: %s", peer, exc)
        except asyncio.CancelledError:
            # The daemon is stopping. This task is the top of a connection nobody awaits, and Python
            # 3.11's stream callback calls exception() on it, which raises if it ends cancelled.
            log.info("data connection from %s closed: daemon stopping", peer)
        except Exception:
            # A bug of ours, not the peer's doing: log it whole, keep serving.
            log.exception("data connection from %s failed", peer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ---- queueing (local API)

    def peer_known(self, peer: str) -> bool:
        return peer in self._peers

    def new_manifest(
        self, peer: str, kind: TransferKind, files: Iterable[FileEntry], study_uid: str | None = None
    ) -> Manifest:
        if peer not in self._peers:
            raise TransferError(f"unknown peer {peer!r}: this facility links to {sorted(self._peers)}")
        if self._peers[peer] is None:
            raise TransferError(f"peer {peer!r} has no data_address in the configuration")
        return Manifest(
            transfer_id=str(uuid.uuid4()),
            sender=self.facility,
            recipient=peer,
            kind=kind,
            files=tuple(files),
            created=time.time(),
            study_uid=study_uid,
        )

    def begin_upload(self, manifest: Manifest) -> Upload:
        return self.outbox.upload(manifest)

    def queue(self, upload: Upload) -> asyncio.Future[Outcome]:
        """Make `upload` durable and hand it to the peer's sender. The future resolves on delivery."""
        upload.commit()
        self.records.queue(upload.manifest)
        return self._queued(upload.manifest)

    def queue_ehr(self, manifest: Manifest, body: bytes) -> asyncio.Future[Outcome]:
        """Queue an EHR message (kept whole in its record: one transaction)."""
        self.records.queue(manifest, body)
        self._senders[manifest.recipient].ehr.added(manifest, body)
        return self._queued(manifest)

    def _queued(self, manifest: Manifest) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiters[manifest.transfer_id] = future
        # Wake the sender first: its frame leaves while the audit record is written (the transfer itself
        # is already durable in the records).
        self._senders[manifest.recipient].wake.set()
        loop.call_soon(
            partial(
                self._audit.record,
                "transfer_queued",
                transfer=manifest.transfer_id,
                peer=manifest.recipient,
                kind=manifest.kind.value,
                files=len(manifest.files),
                bytes=manifest.total_bytes,
                manifest_sha256=manifest.sha256(),
            )
        )
        return future

    def forget_waiter(self, transfer_id: str) -> None:
        self._waiters.pop(transfer_id, None)

    def sender_states(self) -> dict[str, str]:
        return {peer: ctx.state for peer, ctx in self._senders.items()}

    def peer_statuses(self) -> list[DataPeerStatus]:
        """Per peer: the configured ``pq_hybrid`` and the last session whose keys were derived."""
        return [
            DataPeerStatus(
                peer=peer,
                pq_hybrid=peer in self._pq_hybrid,
                last_session=self._last_session.get(peer),
                key_source=source_name(self._keys, peer),
            )
            for peer in self._peers
        ]

    # ---- sessions

    def _session_keyed(self, keyed: SessionKeyed) -> None:
        if keyed.role == "sender":
            self.failing_since.pop(keyed.peer, None)
        kem = KEM_NAME if keyed.pq_hybrid else None
        opened_at = rfc3339(dt.datetime.now(dt.UTC))
        self._last_session[keyed.peer] = DataSession(
            role=keyed.role, pq_hybrid=keyed.pq_hybrid, kem=kem, opened_at=opened_at
        )
        log.info(
            "data session with %s keyed (%s), traffic keys from QKD key%s",
            keyed.peer,
            keyed.role,
            f" and {kem}" if kem else " alone",
        )
        self._audit.record(
            "data_session",
            peer=keyed.peer,
            role=keyed.role,
            key_ids=list(keyed.key_ids),
            key_source=source_name(self._keys, keyed.peer),
            pq_hybrid=keyed.pq_hybrid,
            kem=kem,
        )

    # ---- outcomes

    def _finished(self, tid: str, state: Outgoing, reason: str | None) -> None:
        record = self.records.outgoing(tid)
        peer = record.manifest.recipient if record else "?"
        if state is Outgoing.DELIVERED:
            self._audit.record("transfer_delivered", transfer=tid, peer=peer)
            if record is not None:
                self._metrics.data_bytes(peer, "out", record.manifest.total_bytes)
                self._metrics.transfer_done(peer, "out", record.manifest.kind.value)
        else:
            log.warning("transfer %s refused by %s: %s", tid, peer, reason)
            self._audit.record("transfer_refused", transfer=tid, peer=peer, reason=reason)
        future = self._waiters.pop(tid, None)
        if future is not None and not future.done():
            future.set_result(Outcome(state, reason, time.monotonic()))

    def _otp_fallback(self, tid: str, why: str) -> None:
        self._audit.record("otp_fallback", transfer=tid, reason=why)
        self._metrics.otp_fallback()

    def _ehr_at_rest(self, tid: str, form: str, short: InsufficientKey | None) -> None:
        if short is not None:
            log.warning(
                "EHR message %s stored under AES-256-GCM: its one-time pad needs %d bits, the pool holds %d",
                tid,
                short.requested_bits,
                short.available_bits,
            )
            self._audit.record(
                "ehr_at_rest_fallback",
                transfer=tid,
                needed_bits=short.requested_bits,
                available_bits=short.available_bits,
            )
        self._metrics.ehr_stored_at_rest(form)

    def _delivered_here(self, tid: str, manifest: Manifest, forms: str, stored_at: float) -> None:
        log.info(
            "transfer %s from %s delivered: %d file(s), %d bytes, at rest as %s",
            tid,
            manifest.sender,
            len(manifest.files),
            manifest.total_bytes,
            forms,
        )
        self._audit.record(
            "transfer_received",
            transfer=tid,
            peer=manifest.sender,
            kind=manifest.kind.value,
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            manifest_sha256=manifest.sha256(),
            at_rest=forms,
            # The audit record is written after the sender is told; this is when the inbox had it durably.
            stored_at=rfc3339(dt.datetime.fromtimestamp(stored_at, dt.UTC)),
        )
        self._metrics.transfer_done(manifest.sender, "in", manifest.kind.value)
        for listener in self._arrival_listeners:
            try:
                listener(manifest)
            except Exception:
                log.exception("arrival listener failed on transfer %s", tid)

    def _refused_here(self, tid: str, reason: str) -> None:
        log.warning("transfer %s refused: %s", tid, reason)
        self._audit.record("transfer_refused_here", transfer=tid, reason=reason)
