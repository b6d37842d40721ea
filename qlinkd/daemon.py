"""Assembly of a facility daemon: the durable store, one ``PeerLink`` per peer, the classical listener,
the ETSI 014 KME, the local API, and systemd notifications. Runs until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from qlinkmed.qlinkd.access.gate_api import SettableClock
from qlinkmed.qlinkd.access.gate_service import Gate
from qlinkmed.qlinkd.access.service import Access
from qlinkmed.qlinkd.content.limits import limits_of
from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.data_api import ensure_token
from qlinkmed.qlinkd.dataplane.etsi_client import EtsiClient
from qlinkmed.qlinkd.dataplane.external_keys import ExternalKeys
from qlinkmed.qlinkd.dataplane.keys import KeySource, PeerKeySources, PoolKeys
from qlinkmed.qlinkd.dataplane.rest_keys import RestKeys
from qlinkmed.qlinkd.dataplane.retention import Retention
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.runner import Gateways
from qlinkmed.qlinkd.link.anchor import AnchorBook
from qlinkmed.qlinkd.link.peer_link import PeerLink
from qlinkmed.qlinkd.link.states import Role
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES
from qlinkmed.qlinkd.local_api import make_local_app, refresh_metrics
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.audit import AUDIT_FILE, AuditLog
from qlinkmed.qlinkd.ops.config import ExternalPeerConfig, FacilityConfig
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.metrics_site import make_metrics_app, metrics_server_context
from qlinkmed.qlinkd.ops.process import watchdog
from qlinkmed.qlinkd.ops.sdnotify import Notifier
from qlinkmed.qlinkd.pool.etsi import KmePolicy, make_kme_app
from qlinkmed.qlinkd.pool.keystore import CHECKPOINT_INTERVAL_S, KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager
from qlinkmed.qlinkd.pool.lifetime import more_due, sweep, sweep_interval
from qlinkmed.qlinkd.pool.values import KeyNotice
from qlinkmed.qlinkd.runtime import Runtime

log = logging.getLogger("qlink.daemon")

STORE_FILE = "keys.sqlite3"
SHUTDOWN_S = 2.0
"""How long a stopping daemon lets open requests finish (systemd's TimeoutStopSec is 15 s)."""
FINAL_ANCHOR_S = 1.5
"""How long a stopping daemon waits for its peers to record its last audit head (process.STOP_DEADLINE_S
bounds the whole stop)."""


async def run_daemon(
    config: FacilityConfig,
    *,
    notifier: Notifier | None = None,
    on_ready: Callable[[dict[str, int]], None] | None = None,
) -> None:
    notifier = notifier or Notifier()
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = KeyStore.open(config.state_dir / STORE_FILE)
    audit = AuditLog.open(config.state_dir / AUDIT_FILE, facility=config.id)
    access: Access | None = None
    runners: list[web.AppRunner] = []
    links: dict[str, PeerLink] = {}
    plane: DataPlane | None = None
    gateways: Gateways | None = None
    external: dict[str, ExternalKeys] = {}
    validator = ContentValidator(
        limits_of(config.content),
        workers=config.content.validators,
        memory_bytes=config.content.validator_memory_bytes,
    )
    try:
        for peer in config.peers:
            store.init_auth(peer.id, peer.preshared)
            if peer.decoy is not None:
                fibre = "not given" if peer.fibre_km is None else f"{peer.fibre_km:g} km"
                log.info("link to %s runs bb84-decoy (fibre %s): %s", peer.id, fibre, peer.decoy.summary())
        rt = Runtime(
            config=config,
            store=store,
            audit=audit,
            anchors=AnchorBook(
                audit, tuple(p.id for p in config.peers), interval_s=config.audit_anchor_interval_s
            ),
            metrics=LinkMetrics(),
            client_ssl=pki.client_context(config.tls.ca, config.tls.cert, config.tls.key),
            server_ssl=pki.server_context(config.tls.ca, config.tls.cert, config.tls.key),
        )
        links = {peer.id: PeerLink(rt, peer.id) for peer in config.peers}
        for peer_id in links:
            rt.metrics.add_peer(peer_id)
            rt.metrics.set_low_watermark(peer_id, config.peer(peer_id).low_watermark_bits)

        sae_peer = {sae: peer.id for peer in config.peers for sae in peer.saes}

        def notify_sent(peer_id: str, notice: KeyNotice) -> None:
            links[peer_id].push_notice(notice)

        manager = StoreKeyManager(
            store,
            facility=config.id,
            local_saes=config.saes,
            sae_to_peer=sae_peer,
            notify_sent=notify_sent,
            pool_capacity_bits=max((p.high_watermark_bits for p in config.peers), default=1 << 24),
        )
        rt.on_notice_arrived = manager.notice_arrived
        policy = KmePolicy(
            key_size=config.kme.key_size,
            min_key_size=config.kme.min_key_size,
            max_key_size=config.kme.max_key_size,
            max_key_per_request=config.kme.max_key_per_request,
        )

        def audit_delivery(event: str, fields: dict[str, object]) -> None:
            audit.record(event, **fields)
            key_ids = fields.get("key_IDs")
            if event in ("etsi.enc_keys", "etsi.dec_keys") and isinstance(key_ids, list):
                master, slave = str(fields.get("master_SAE_ID")), str(fields.get("slave_SAE_ID"))
                enc = event == "etsi.enc_keys"
                remote = slave if enc else master
                rt.metrics.delivered(
                    sae_peer.get(remote, "?"), master if enc else slave, "enc" if enc else "dec", len(key_ids)
                )

        # Peers keyed by an external ETSI 014 KME run no link: only the data plane, keyed by that KME.
        external = {peer.id: _external_keys(peer) for peer in config.external_peers}
        by_peer: dict[str, KeySource] = dict(external)
        for peer_id in external:
            log.info("data plane with %s keyed by the ETSI 014 KME %s", peer_id, external[peer_id].url)
        plane = DataPlane(
            facility=config.id,
            state_dir=config.state_dir,
            peers={p.id: p.data_address for p in config.peers}
            | {p.id: p.data_address for p in config.external_peers},
            keys=PeerKeySources(PoolKeys(config.id, manager, store), by_peer),
            client_ssl=rt.client_ssl,
            server_ssl=rt.server_ssl,
            audit=audit,
            metrics=rt.metrics,
            pq_hybrid=[p.id for p in config.peers if p.pq_hybrid]
            + [p.id for p in config.external_peers if p.pq_hybrid],
            validator=validator,
            departments=config.departments,
            rest_keys=RestKeys(config.id, manager, store),
            inbox_dir=config.inbox.dir,
        )
        token = ensure_token(config.state_dir)
        gate_clock = SettableClock() if config.gate.test_clock else None
        clock = gate_clock or time.time
        access = Access.open(
            config.state_dir,
            config.access,
            audit,
            registry=rt.metrics.registry,
            clock=clock,
            departments=None if config.departments is None else config.departments.names(),
        )
        gate = Gate.open(config.gate, audit, roles=access.roles, clock=clock, registry=rt.metrics.registry)
        gateways = Gateways(
            config.gateways,
            state_dir=config.state_dir,
            plane=plane,
            validator=validator,
            audit=audit,
            metrics=rt.metrics,
            max_ehr_bytes=config.content.max_ehr_bytes,
            server_ssl=rt.server_ssl,
            client_ssl=rt.client_ssl,
        )
        retention = Retention(
            config.inbox,
            records=plane.records,
            inbox_root=plane.inbox.root,
            audit=audit,
            outcomes=gateways.ledger.outcomes if gateways.ledger is not None else None,
            on_purged=rt.metrics.inbox_purged,
            rest_keys=plane.inbox.rest_keys,
        )
        # Whether or not a policy is set now: purges a stop interrupted are finished before anything else.
        retention.recover()
        # Keys whose lifetime ended while the daemon was down go before any SAE can ask for them.
        while _sweep_expired(rt):
            pass
        # Awaited: a signal during the second or so this takes still stops the daemon at once.
        loading = time.monotonic()
        await validator.start()
        log.info(
            "%d content validator process(es) loaded in %.2f s", validator.workers, time.monotonic() - loading
        )
        started = time.monotonic()
        apps = {
            "classical": (_classical_app(links), config.listen.classical, rt.server_ssl),
            "kme": (make_kme_app(manager, policy, audit=audit_delivery), config.listen.kme, rt.server_ssl),
            "local": (
                make_local_app(
                    rt,
                    links,
                    started=started,
                    plane=plane,
                    token=token,
                    validator=validator,
                    extra=gateways.status_json if config.gateways.any else None,
                    gateways=gateways if config.gateways.any else None,
                    access=access,
                    gate=gate,
                    gate_clock=gate_clock,
                ),
                config.listen.local,
                None,
            ),
        }
        apps.update(gateways.apps())
        if config.metrics is not None:
            remote = config.metrics

            def render_metrics() -> bytes:
                refresh_metrics(rt, links, plane)
                return rt.metrics.render()

            context = metrics_server_context(remote.tls_cert, remote.tls_key, remote.client_ca)
            apps["metrics"] = (make_metrics_app(render_metrics), remote.listen, context)
        ports: dict[str, int] = {}
        for name, (app, address, ssl_context) in apps.items():
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, address.host, address.port, ssl_context=ssl_context)
            await site.start()
            ports[name] = runner.addresses[0][1]  # its one site's first socket: the port bound for 0
        # Before the data plane receives: a gateway reconciles its ledger with the inbox first.
        ports.update(await gateways.start_listeners())
        if config.listen.data is not None:
            ports["data"] = await plane.start(config.listen.data)
        log.info(
            "qlinkd %s ready: classical %s, kme %s, local %s",
            config.id,
            ports["classical"],
            ports["kme"],
            ports["local"],
        )
        audit.record("daemon_started", peers=[p.id for p in config.peers])
        notifier.ready()
        notifier.status(f"serving {len(links)} link(s)")
        if on_ready is not None:
            on_ready(ports)
        async with asyncio.TaskGroup() as tg:
            for link in links.values():
                tg.create_task(link.run())
            tg.create_task(plane.run_senders())
            tg.create_task(gateways.run())
            tg.create_task(_checkpoints(store))
            tg.create_task(_expiry_sweeps(rt))
            if config.inbox.enabled:
                tg.create_task(retention.run())
            interval = notifier.watchdog_interval()
            if interval:
                tg.create_task(watchdog(notifier, interval))
            try:
                await asyncio.Event().wait()  # until the signal cancels the daemon
            finally:
                # While the links still run (the task group cancels them after this): our last head goes
                # to every connected peer, so cutting the log while we are down shows.
                await _anchor_final(audit, links.values())
    finally:
        notifier.stopping()
        for link in links.values():
            await link.close()
        if plane is not None:
            await plane.stop()
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if gateways is not None:
            await gateways.close()
        if plane is not None:
            plane.close()
        for source in external.values():
            with contextlib.suppress(Exception):
                await source.close()
        validator.close()
        with contextlib.suppress(Exception):
            audit.record("daemon_stopped")
        audit.close()
        if access is not None:
            access.close()
        store.close()


def _external_keys(peer: ExternalPeerConfig) -> ExternalKeys:
    settings = peer.etsi014
    client = EtsiClient(
        settings.kme_url, pki.client_context(settings.ca, settings.client_cert, settings.client_key)
    )
    return ExternalKeys(peer.id, client, sae_id=settings.sae_id, peer_sae_id=settings.peer_sae_id)


async def _anchor_final(audit: AuditLog, links: Iterable[PeerLink]) -> None:
    with contextlib.suppress(Exception):
        audit.record("daemon_stopping")
    await asyncio.gather(*(link.anchor_now(FINAL_ANCHOR_S) for link in links))


async def _checkpoints(store: KeyStore) -> None:
    while True:
        await asyncio.sleep(CHECKPOINT_INTERVAL_S)
        store.checkpoint_if_due()


def _sweep_expired(rt: Runtime) -> bool:
    """One batch of expired keys deleted, logged, audited and counted; True if more may be due."""
    # Wall time: a key's acceptance time is stored, and its lifetime runs across restarts.
    max_age_s = rt.config.kme.key_expiry_s
    expired = sweep(rt.store, max_age_s=max_age_s, now=time.time(), audit=rt.audit, metrics=rt.metrics)
    for group in expired:
        log.info(
            "%d key(s), %d bits, held for %s from %s (peer %s) expired unfetched after %g s",
            len(group.key_ids),
            group.bits,
            group.slave_sae,
            group.master_sae,
            group.peer,
            max_age_s,
        )
    return more_due(expired)


async def _expiry_sweeps(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(sweep_interval(rt.config.kme.key_expiry_s))
        while _sweep_expired(rt):
            await asyncio.sleep(0)  # a backlog goes in batches, other requests served between them


def _classical_app(links: dict[str, PeerLink]) -> web.Application:
    app = web.Application(client_max_size=4096)

    async def link_socket(request: web.Request) -> web.StreamResponse:
        who = pki.peer_common_name(request.transport)
        link = links.get(who or "")
        if link is None:
            log.warning("classical connection refused: certificate %r is no configured peer", who)
            raise web.HTTPForbidden(text="not a configured peer\n")
        if link.role is Role.ALICE:
            log.warning("classical connection from %s refused: this facility dials it", who)
            raise web.HTTPForbidden(text="this facility dials you: it is Alice on the link\n")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=15)
        await ws.prepare(request)
        await link.accept(ws)
        return ws

    app.router.add_get("/v1/link", link_socket)
    return app
