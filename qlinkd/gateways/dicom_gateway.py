"""The DICOM gateway of a facility, as the daemon runs it: the SCP that takes C-STOREs in and queues
studies for peers (dicom_scp), and the forwarding of studies that arrive here to the PACS
(dicom_forward), with one status object for /v1/status."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.dicom_config import DicomGatewayConfig
from qlinkmed.qlinkd.gateways.dicom_forward import GATEWAY, DicomForwarding
from qlinkmed.qlinkd.gateways.dicom_scp import DicomScp
from qlinkmed.qlinkd.gateways.forwarder import Attempt
from qlinkmed.qlinkd.gateways.forwards import Forward, ForwardLedger
from qlinkmed.qlinkd.ops.audit import AuditLog


class DicomGateway:
    def __init__(
        self,
        config: DicomGatewayConfig,
        *,
        plane: DataPlane,
        validator: ContentValidator,
        ledger: ForwardLedger,
        audit: AuditLog,
        state_dir: Path,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        on_outcome: Callable[[Forward, Attempt], None] | None = None,
    ) -> None:
        """The TLS contexts are the facility's ([tls]), used where the configuration asks for DICOM TLS."""
        # pynetdicom logs every association and message at INFO: thousands of lines a day at a busy site.
        # Its warnings and errors still show; our own lines say what each association and study came to.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self._ledger = ledger
        self.scp = DicomScp(
            config, plane=plane, validator=validator, audit=audit, state_dir=state_dir, server_ssl=server_ssl
        )
        self.forwarding = DicomForwarding(
            config, plane=plane, ledger=ledger, audit=audit, client_ssl=client_ssl, on_outcome=on_outcome
        )

    async def start(self) -> int:
        """Listen for associations; returns the SCP's port."""
        return await self.scp.start()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.scp.run())
            tg.create_task(self.forwarding.run())

    async def close(self) -> None:
        await asyncio.to_thread(self.scp.close)

    def status(self) -> dict[str, Any]:
        """The gateway's status: the SCP's counters and, per PACS, what is pending, parked, delivered."""
        snapshot = self.scp.snapshot()
        snapshot.destinations = [
            {
                "destination": s.destination,
                "pending": s.pending,
                "parked": s.parked,
                "delivered": s.delivered,
                "oldest_pending": s.oldest_pending,
                "last_error": s.last_error,
            }
            for s in self._ledger.summaries()
            if s.gateway == GATEWAY
        ]
        return snapshot.to_json()
