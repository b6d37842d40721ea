"""`[gateway.*]`: the hospital-facing gateways a facility runs (each optional)."""

from __future__ import annotations

from dataclasses import dataclass

from qlinkmed.qlinkd.gateways.dicom_config import DicomGatewayConfig, parse_dicom_gateway
from qlinkmed.qlinkd.gateways.fhir_config import FhirGatewayConfig, fhir_gateway
from qlinkmed.qlinkd.gateways.mllp_config import MllpConfig, mllp_section
from qlinkmed.qlinkd.ops.toml_reader import Table


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaysConfig:
    dicom: DicomGatewayConfig | None = None
    fhir: FhirGatewayConfig | None = None
    mllp: MllpConfig | None = None

    @property
    def any(self) -> bool:
        return self.dicom is not None or self.fhir is not None or self.mllp is not None


def gateways_section(root: Table, peers: dict[str, bool]) -> GatewaysConfig:
    """`peers`: each configured peer facility with whether it has a data_address (a route may name only
    those that have one)."""
    table = root.table("gateway", optional=True)
    dicom = parse_dicom_gateway(table, peers)
    fhir = fhir_gateway(table.table("fhir")) if table.has("fhir") else None
    mllp = mllp_section(table, tuple(peers))
    table.finish()
    return GatewaysConfig(dicom=dicom, fhir=fhir, mllp=mllp)
