"""The HL7 v2 (MLLP) gateway of one facility as the daemon runs it: the listener (if `listen` is set) and
the forwarding to the interface engines (if destinations are set), with one status snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.forwarder import Attempt
from qlinkmed.qlinkd.gateways.forwards import DestinationSummary, Forward, ForwardLedger
from qlinkmed.qlinkd.gateways.mllp_config import MllpConfig
from qlinkmed.qlinkd.gateways.mllp_forward import GATEWAY, MllpForwarding
from qlinkmed.qlinkd.gateways.mllp_listener import MllpListener
from qlinkmed.qlinkd.ops.audit import AuditLog


@dataclass(frozen=True, slots=True, kw_only=True)
class MllpStatus:
    listening: str | None
    """host:port of the listener, None if this facility only forwards."""
    connections_open: int
    accepted: int
    """Messages ACKed AA/CA since the daemon started."""
    refused: int
    """Messages answered AE/AR (CE/CR) since the daemon started."""
    last_error: str | None
    """The listener's last problem (a refused message, a dropped frame, a closed connection)."""
    destinations: tuple[DestinationSummary, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "listening": self.listening,
            "connections_open": self.connections_open,
            "accepted": self.accepted,
            "refused": self.refused,
            "last_error": self.last_error,
            "destinations": [
                {
                    "name": d.destination,
                    "pending": d.pending,
                    "parked": d.parked,
                    "delivered": d.delivered,
                    "oldest_pending": d.oldest_pending,
                    "last_error": d.last_error,
                }
                for d in self.destinations
            ],
        }


class MllpGateway:
    def __init__(
        self,
        config: MllpConfig,
        plane: DataPlane,
        validator: ContentValidator,
        ledger: ForwardLedger,
        audit: AuditLog,
        *,
        on_outcome: Callable[[Forward, Attempt], None] | None = None,
    ) -> None:
        """`on_outcome` hears every forwarding attempt's outcome after it is audited (the metrics)."""
        self._ledger = ledger
        self.listener = MllpListener(config, plane, validator) if config.listen is not None else None
        self.forwarding = MllpForwarding(config.destinations, plane, ledger, audit, on_outcome=on_outcome)
        plane.add_arrival_listener(self.forwarding.arrived)

    async def start(self) -> int | None:
        """Reconcile the ledger with the inbox, then bind the listener; its port (None without one). Call it
        before the data plane starts receiving, so no arrival overtakes one being reconciled."""
        if self.forwarding.forwarders:
            self.forwarding.reconcile()
        return await self.listener.start() if self.listener is not None else None

    async def run(self) -> None:
        """The forwarders, until cancelled."""
        if self.forwarding.forwarders:
            await self.forwarding.run()
        else:
            await asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()

    def status(self) -> MllpStatus:
        counters = self.listener.counters if self.listener is not None else None
        return MllpStatus(
            listening=self.listener.address if self.listener is not None else None,
            connections_open=counters.connections_open if counters else 0,
            accepted=counters.accepted if counters else 0,
            refused=counters.refused if counters else 0,
            last_error=counters.last_error if counters else None,
            destinations=tuple(s for s in self._ledger.summaries() if s.gateway == GATEWAY),
        )
