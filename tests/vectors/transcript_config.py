"""The fixed configuration of the recorded transcript vector."""

from __future__ import annotations

from typing import Any

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.sim import SimConfig

VECTOR_CONFIG = SimConfig(
    qubits=100_000,
    channel=ChannelModel(distance_km=1.0, detector_efficiency=0.5, misalignment=0.01, afterpulse=0.01),
    per_pulse=True,  # the recorded vector was drawn pulse by pulse
    seed=20261124,
)


def config_as_dict(config: SimConfig) -> dict[str, Any]:
    return {
        "qubits": config.qubits,
        "distance_km": config.channel.distance_km,
        "detector_efficiency": config.channel.detector_efficiency,
        "misalignment": config.channel.misalignment,
        "afterpulse": config.channel.afterpulse,
        "dark_count": config.channel.dark_count,
        "seed": config.seed,
        "backend": config.backend,
    }
