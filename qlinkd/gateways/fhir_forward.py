"""The receiving side of the FHIR gateway: every FHIR message that arrives in this facility's inbox is
POSTed to the configured FHIR server(s) — a resource to [base]/[type], a transaction or batch Bundle to
[base] — through the forwarding ledger (order kept, retried while the server is down or busy, parked on a
refusal)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from qlinkmed.qlinkd.dataplane.manifest import Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import Incoming
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ContentError, IntegrityError, TransferError
from qlinkmed.qlinkd.gateways.fhir_config import FhirDestination
from qlinkmed.qlinkd.gateways.fhir_outcome import FHIR_JSON
from qlinkmed.qlinkd.gateways.forwarder import AUDIT_EVENT, Attempt, Forwarder, Verdict
from qlinkmed.qlinkd.gateways.forwards import Forward, ForwardLedger
from qlinkmed.qlinkd.ops.audit import AuditLog

log = logging.getLogger("qlink.gateway.fhir")

GATEWAY = "fhir"
RESPONSE_BYTES = 64 << 10
"""How much of a server's answer is read (the OperationOutcome of a refusal); the rest is not needed."""
RECONCILE_RECENT = 1000
"""How many of the newest inbox entries start-up reconciliation looks at (a crash loses at most the last
few arrivals' ledger rows; a large inbox is never loaded whole at start-up)."""
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses that mean "not now" rather than "not this": retried."""


def is_fhir_message(manifest: Manifest) -> bool:
    return (
        manifest.kind is TransferKind.EHR and len(manifest.files) == 1 and manifest.files[0].content == "fhir"
    )


def _client_ssl(destination: FhirDestination) -> ssl.SSLContext | None:
    if not destination.base_url.startswith("https:"):
        return None
    context = ssl.create_default_context(cafile=str(destination.ca) if destination.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if destination.client_cert is not None and destination.client_key is not None:
        context.load_cert_chain(destination.client_cert, destination.client_key)
    return context


def _summary(status: int, text: str) -> str:
    """A server's answer in one line: its status and the diagnostics of an OperationOutcome if any."""
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:200]}"
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        issues = parsed.get("issue") or []
        said = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in issues if isinstance(i, dict))
        return f"HTTP {status}: {said}"
    return f"HTTP {status}"


class FhirForwarding:
    """One Forwarder per configured destination, fed by the data plane's arrivals."""

    def __init__(
        self,
        destinations: tuple[FhirDestination, ...],
        *,
        plane: DataPlane,
        ledger: ForwardLedger,
        audit: AuditLog,
        on_outcome: Callable[[Forward, Attempt], None] | None = None,
    ) -> None:
        self._destinations = {d.name: d for d in destinations}
        self._plane = plane
        self._ledger = ledger
        self._audit = audit
        self._extra_outcome = on_outcome
        self._tokens = {
            d.name: d.token_file.read_text().strip() if d.token_file is not None else None
            for d in destinations
        }
        self._ssl = {d.name: _client_ssl(d) for d in destinations}
        self.forwarders = {
            name: Forwarder(ledger, GATEWAY, name, self._deliverer(d), on_outcome=self._on_outcome)
            for name, d in self._destinations.items()
        }
        self._session: aiohttp.ClientSession | None = None

    def arrived(self, manifest: Manifest) -> None:
        """The data plane's arrival listener."""
        if not self._destinations or not is_fhir_message(manifest):
            return
        self._ledger.add(GATEWAY, manifest.transfer_id, self._destinations)
        for forwarder in self.forwarders.values():
            forwarder.wake()

    def reconcile(self) -> int:
        """Owe the FHIR messages the inbox holds but the ledger has never seen (a crash between the
        inbox's commit and the ledger's); returns how many."""
        added = 0
        for record in reversed(self._plane.records.list_incoming(limit=RECONCILE_RECENT)):
            if record.state is not Incoming.DELIVERED or not is_fhir_message(record.manifest):
                continue
            if not self._ledger.known(GATEWAY, record.manifest.transfer_id):
                added += self._ledger.add(GATEWAY, record.manifest.transfer_id, self._destinations) > 0
        return added

    async def run(self) -> None:
        if not self._destinations:
            return
        self.reconcile()
        # Connection pooling per destination; each request carries its own timeout.
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
            self._session = session
            for forwarder in self.forwarders.values():
                tg.create_task(forwarder.run())

    def _on_outcome(self, forward: Forward, attempt: Attempt) -> None:
        event = AUDIT_EVENT[attempt.verdict]
        self._audit.record(
            event,
            gateway=GATEWAY,
            destination=forward.destination,
            transfer=forward.transfer_id,
            detail=attempt.detail,
        )
        if self._extra_outcome is not None:
            self._extra_outcome(forward, attempt)

    def _deliverer(self, destination: FhirDestination) -> Callable[[Forward], Any]:
        async def deliver(forward: Forward) -> Attempt:
            body = self._message(forward.transfer_id)
            if body is None:
                return Attempt(Verdict.PARK, "the message is no longer in the inbox")
            try:
                resource = json.loads(body)
                kind = str(resource["resourceType"])
            except (ValueError, KeyError, TypeError):
                return Attempt(Verdict.PARK, "the stored message is not a FHIR resource")
            batch = kind == "Bundle" and resource.get("type") in ("transaction", "batch")
            url = destination.base_url if batch else f"{destination.base_url}/{kind}"
            headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Prefer": "return=OperationOutcome"}
            token = self._tokens[destination.name]
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            session = self._session
            if session is None:
                return Attempt(Verdict.RETRY, "the forwarder is not running")
            timeout = aiohttp.ClientTimeout(total=destination.timeout_s)
            try:
                async with session.post(
                    url, data=body, headers=headers, ssl=self._ssl[destination.name] or True, timeout=timeout
                ) as response:
                    text = (await response.content.read(RESPONSE_BYTES)).decode(errors="replace")
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Attempt(
                    Verdict.RETRY, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                )
            said = _summary(status, text)
            if 200 <= status < 300:
                return Attempt(Verdict.DELIVERED, said)
            if status in RETRY_STATUSES:
                return Attempt(Verdict.RETRY, said)
            return Attempt(Verdict.PARK, said)

        return deliver

    def _message(self, transfer_id: str) -> bytes | None:
        try:
            return self._plane.inbox.read_file(transfer_id, 0)
        except (TransferError, IntegrityError, ContentError, OSError) as exc:
            log.error("FHIR message %s cannot be read from the inbox: %s", transfer_id, exc)
            return None
