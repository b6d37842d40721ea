"""`[gateway.*]`: the hospital-facing gateways a facility runs (each optional)."""

from __future__ import annotations

from dataclasses import dataclass

from qlinkmed.qlinkd.gateways.fhir_config import FhirGatewayConfig, fhir_gateway
from qlinkmed.qlinkd.ops.toml_reader import Table


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaysConfig:
    fhir: FhirGatewayConfig | None = None

    @property
    def any(self) -> bool:
        return self.fhir is not None


def gateways_section(root: Table) -> GatewaysConfig:
    table = root.table("gateway", optional=True)
    fhir = fhir_gateway(table.table("fhir")) if table.has("fhir") else None
    table.finish()
    return GatewaysConfig(fhir=fhir)
