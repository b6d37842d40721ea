"""The QFNN read with finite shots on qiskit-aer: what a quantum computer would give instead of the exact
probability. One parameterised circuit (`qfnn.circuit`'s gates, the angles left as parameters) is bound
once per row and sampled `shots` times by AerSimulator with a fixed seed; the estimate of P(malicious) is
the share of shots that read 1. qiskit is imported inside the function, so importing this costs nothing.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, SimulationError
from .qfnn import QfnnModel, _ring

BATCH_ROWS = 2000
"""Rows bound per Aer job: keeps the job's memory small whatever the test set's size."""


def sampled_scores(model: QfnnModel, x: np.ndarray, *, shots: int, seed: int) -> np.ndarray:
    """Estimated P(malicious) of each row of raw features from `shots` measurements on AerSimulator."""
    if shots < 1:
        raise ConfigError("shots", f"must be at least 1, got {shots}")
    from qiskit import QuantumCircuit, transpile
    from qiskit.circuit import ParameterVector
    from qiskit_aer import AerSimulator

    q = model.qubits
    a = ParameterVector("a", q)
    qc = QuantumCircuit(q, 1)
    for k in range(q):
        qc.h(k)
        qc.rz(a[k], k)
    for k in range(q - 1):
        qc.cx(k, k + 1)
    for layer in model.params:
        for k in range(q):
            qc.ry(float(layer[k, 0]), k)
            qc.rz(float(layer[k, 1]), k)
        for c, t in _ring(q):
            qc.cx(c, t)
    qc.measure(0, 0)
    backend = AerSimulator(seed_simulator=seed)
    compiled = transpile(qc, backend, optimization_level=0)
    angles = model.transform.angles(np.atleast_2d(np.asarray(x, dtype=np.float64)))
    out = np.empty(len(angles))
    for lo in range(0, len(angles), BATCH_ROWS):
        chunk = angles[lo : lo + BATCH_ROWS]
        binds = [{a[k]: chunk[:, k].tolist() for k in range(q)}]
        result = backend.run([compiled], parameter_binds=binds, shots=shots).result()
        if not result.success:
            raise SimulationError(f"qiskit-aer failed: {result.status}")
        for i in range(len(chunk)):
            counts = result.get_counts(i)
            out[lo + i] = counts.get("1", 0) / shots
    return out
