"""Measurement backends: where the qubits are measured. Everything classical about the channel (loss,
dark counts, after-pulses) lives in the emulator and is shared by every backend.

``get_backend("qiskit")`` imports qiskit only when asked, so the CLI and the numpy path stay light.
"""

from __future__ import annotations

from .base import MeasurementBackend

BACKEND_NAMES = ("numpy", "qiskit")


def get_backend(name: str) -> MeasurementBackend:
    """Return the backend called `name` (``numpy`` or ``qiskit``)."""
    if name == "numpy":
        from .numpy_backend import NumpyBackend

        return NumpyBackend()
    if name == "qiskit":
        from .qiskit_backend import QiskitBackend

        return QiskitBackend()
    from ..errors import ConfigError

    raise ConfigError("backend", f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


__all__ = ["BACKEND_NAMES", "MeasurementBackend", "get_backend"]
