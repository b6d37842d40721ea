"""What every part of a running daemon shares: its configuration, durable store, audit log (and the
anchors kept with the peers), metrics and TLS contexts. Built once by ``daemon.run_daemon``; nothing here
does I/O on its own."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from qlinkmed.qcore.params import SourceKind
from qlinkmed.qlinkd.link.anchor import AnchorBook
from qlinkmed.qlinkd.link.events import LinkConfig
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.config import FacilityConfig
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.pool.keystore import KeyStore


@dataclass(slots=True, kw_only=True)
class Runtime:
    config: FacilityConfig
    store: KeyStore
    audit: AuditLog
    anchors: AnchorBook
    metrics: LinkMetrics
    client_ssl: ssl.SSLContext
    server_ssl: ssl.SSLContext
    on_notice_arrived: Callable[[], None] = field(default=lambda: None)

    def link_config(self, peer_id: str) -> LinkConfig:
        peer = self.config.peer(peer_id)
        return LinkConfig(
            facility=self.config.id,
            peer=peer.id,
            protocol=peer.protocol,
            source=SourceKind.WCP if peer.decoy is not None else SourceKind.SINGLE_PHOTON,
            pulses_per_round=peer.pulses_per_round,
            distill=peer.distill_config(),
            round_timeout_s=peer.round_timeout_s,
            rounds_in_flight=peer.rounds_in_flight,
        )

    def kme_notice_arrived(self) -> None:
        self.on_notice_arrived()
