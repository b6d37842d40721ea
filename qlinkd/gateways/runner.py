"""The gateways of one daemon, built from `[gateway.*]`: their web applications (served by the daemon
beside its own), their forwarders (run in the daemon's task group) and the one forwarding ledger they
share."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.config import GatewaysConfig
from qlinkmed.qlinkd.gateways.dicom_gateway import DicomGateway
from qlinkmed.qlinkd.gateways.fhir_api import make_fhir_app
from qlinkmed.qlinkd.gateways.fhir_api import server_ssl as fhir_server_ssl
from qlinkmed.qlinkd.gateways.fhir_forward import FhirForwarding
from qlinkmed.qlinkd.gateways.forwarder import Attempt, Verdict
from qlinkmed.qlinkd.gateways.forwards import LEDGER_FILE, Forward, ForwardLedger, ForwardState
from qlinkmed.qlinkd.gateways.mllp_gateway import MllpGateway
from qlinkmed.qlinkd.ops import entropy
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from qlinkmed.qlinkd.ops.toml_reader import Address


class Gateways:
    def __init__(
        self,
        config: GatewaysConfig,
        *,
        state_dir: Path,
        plane: DataPlane,
        validator: ContentValidator,
        audit: AuditLog,
        metrics: LinkMetrics,
        max_ehr_bytes: int,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        """`server_ssl`/`client_ssl`: the facility's mutual-TLS contexts ([tls]), for the DICOM gateway's
        TLS options."""
        self._config = config
        self._metrics = metrics
        self._audit = audit
        self.ledger = ForwardLedger.open(state_dir / LEDGER_FILE) if config.any else None
        self._apps: dict[str, tuple[web.Application, Address, ssl.SSLContext | None]] = {}
        self._fhir: FhirForwarding | None = None
        self.dicom: DicomGateway | None = None
        if config.dicom is not None and self.ledger is not None:
            self.dicom = DicomGateway(
                config.dicom,
                plane=plane,
                validator=validator,
                ledger=self.ledger,
                audit=audit,
                state_dir=state_dir,
                server_ssl=server_ssl,
                client_ssl=client_ssl,
                on_outcome=self._counted,
            )
            for name in self.dicom.forwarding.destinations():
                metrics.add_forward("dicom", name)
        self.mllp: MllpGateway | None = None
        if config.mllp is not None and self.ledger is not None:
            self.mllp = MllpGateway(
                config.mllp, plane, validator, self.ledger, audit, on_outcome=self._counted
            )
            for name in self.mllp.forwarding.forwarders:
                metrics.add_forward("mllp", name)
        if config.fhir is not None and self.ledger is not None:
            fhir = config.fhir
            token = entropy.bearer_token(fhir.token_file) if fhir.token_file is not None else None
            app = make_fhir_app(
                fhir, plane=plane, validator=validator, audit=audit, token=token, max_ehr_bytes=max_ehr_bytes
            )
            self._apps["fhir"] = (app, fhir.listen, fhir_server_ssl(fhir))
            self._fhir = FhirForwarding(
                fhir.destinations, plane=plane, ledger=self.ledger, audit=audit, on_outcome=self._counted
            )
            plane.add_arrival_listener(self._fhir.arrived)
            for destination in fhir.destinations:
                metrics.add_forward("fhir", destination.name)

    def _counted(self, forward: Forward, attempt: Attempt) -> None:
        if attempt.verdict is Verdict.DELIVERED:
            self._metrics.forward_done(forward.gateway, forward.destination)
        else:
            self._metrics.forward_failed(forward.gateway, forward.destination)

    def apps(self) -> dict[str, tuple[web.Application, Address, ssl.SSLContext | None]]:
        """Name -> (application, address, TLS context) for the daemon to serve."""
        return dict(self._apps)

    async def start_listeners(self) -> dict[str, int]:
        """Open the gateways' own listeners (those that are no aiohttp application); name -> port."""
        ports = {}
        if self.dicom is not None:
            ports["dicom"] = await self.dicom.start()
        if self.mllp is not None and (port := await self.mllp.start()) is not None:
            ports["mllp"] = port
        return ports

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self._fhir is not None:
                tg.create_task(self._fhir.run())
            if self.dicom is not None:
                tg.create_task(self.dicom.run())
            if self.mllp is not None:
                tg.create_task(self.mllp.run())

    def status_json(self) -> dict[str, Any]:
        """What /v1/status adds: {"gateways": ...}."""
        return {"gateways": self.status()}

    def status(self) -> dict[str, Any]:
        """Per gateway: where it listens; per destination: what the ledger owes, holds and delivered."""
        out: dict[str, Any] = {}
        if self.dicom is not None:
            out["dicom"] = self.dicom.status()
        if self.mllp is not None:
            out["mllp"] = self.mllp.status().to_json()
        if self._config.fhir is not None:
            out["fhir"] = {"listen": str(self._config.fhir.listen), "base_path": self._config.fhir.base_path}
        if self.ledger is not None:
            out["destinations"] = [
                {
                    "gateway": s.gateway,
                    "destination": s.destination,
                    "pending": s.pending,
                    "parked": s.parked,
                    "delivered": s.delivered,
                    "oldest_pending": s.oldest_pending,
                    "last_error": s.last_error,
                }
                for s in self.ledger.summaries()
            ]
        return out

    def forwards(
        self, *, state: ForwardState | None, gateway: str | None, destination: str | None, limit: int
    ) -> list[Forward]:
        """The ledger's rows for an operator (transfer ids and errors, never content)."""
        if self.ledger is None:
            return []
        return self.ledger.rows(state=state, gateway=gateway, destination=destination, limit=limit)

    def release(
        self, gateway: str, destination: str | None, transfer_id: str | None, *, who: str, note: str
    ) -> list[Forward]:
        """An operator fixed what made a destination refuse: its parked rows are owed again, each release
        audited with who and why."""
        if self.ledger is None:
            return []
        released = self.ledger.retry_parked(gateway, destination, transfer_id)
        for forward in released:
            self._audit.record(
                "forward_released",
                gateway=forward.gateway,
                destination=forward.destination,
                transfer=forward.transfer_id,
                parked_for=forward.last_error,
                who=who,
                note=note,
            )
        return released

    async def close(self) -> None:
        if self.mllp is not None:
            await self.mllp.stop()
        if self.dicom is not None:
            await self.dicom.close()
        if self.ledger is not None:
            self.ledger.close()
