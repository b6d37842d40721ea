"""The quantum one-time pad of seed paper 003 (IQ-HDM, its QOTPE unit, Eqs. 1-7; docs/references.md §11).

Each data bit b is basis-encoded as a qubit |b>; a key of two bit strings alpha, beta of the data's length
encrypts the register with X^alpha Z^beta (qubit i gets X if alpha_i, then Z if beta_i). Averaged over the
2^(2n) equally likely keys any n-qubit state becomes the maximally mixed state I/2^n (Eq. 7): without the
key the cipher carries no information (`key_averaged_state` computes that average for small n, and the
tests check it).

What this means for the classical data qlink stores, said plainly: the data qubits are basis states, on
which Z only adds a global phase (Z|b> = (-1)^b |b>), so the measured cipher is exactly data XOR alpha, a
classical one-time pad. beta changes nothing that can be measured; it is kept (and drawn, and stored) so
that the stored form is the paper's scheme and would stay secure for data qubits in superposition, which
qlink does not have. Security rests on alpha being uniformly random, used once and kept away from the
cipher, as for any one-time pad; the "quantum" part adds no security to classical bits.

Two paths give the same cipher bits: `encrypt` (numpy, the production path: the bits are XORed with
alpha) and `circuit_encrypt` (a qiskit circuit preparing |data>, applying X^alpha Z^beta and measuring
on qiskit-aer, for payloads of up to CIRCUIT_MAX_BITS bits, a cross-check). qiskit is imported inside the
functions that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import SimulationError, UsageError

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

CIRCUIT_MAX_BITS = 1024
"""Widest payload the circuit path simulates (one qubit a bit; a basis state needs a single shot). The
circuit holds only X, Z and measurements, all Clifford operations, so qiskit-aer's stabilizer method runs
it in polynomial time: a statevector of 24 qubits already took ~2 s a circuit."""
KEY_BYTES_PER_DATA_BYTE = 2
"""alpha and beta: two key bits for every data bit."""


@dataclass(frozen=True, slots=True)
class QotpKey:
    """alpha and beta, packed big-endian bit strings of the data's length (bit i of the data is bit
    7 - i % 8 of byte i // 8, as numpy's packbits)."""

    alpha: bytes
    beta: bytes

    def __post_init__(self) -> None:
        if len(self.alpha) != len(self.beta):
            raise UsageError(f"alpha and beta differ in length ({len(self.alpha)} != {len(self.beta)} bytes)")

    @classmethod
    def from_material(cls, material: bytes) -> QotpKey:
        """Split key material of twice the data's length: alpha first, then beta."""
        if len(material) % 2:
            raise UsageError(f"QOTP key material must be of even length, not {len(material)} bytes")
        half = len(material) // 2
        return cls(material[:half], material[half:])

    def __len__(self) -> int:
        return len(self.alpha)


def _check(data: bytes, key: QotpKey) -> None:
    if len(data) != len(key):
        raise UsageError(f"the key pads {len(key)} bytes, the data has {len(data)}")


def encrypt(data: bytes, key: QotpKey) -> bytes:
    """The measured cipher of the basis-encoded `data` under X^alpha Z^beta: data XOR alpha."""
    _check(data, key)
    return np.bitwise_xor(np.frombuffer(data, np.uint8), np.frombuffer(key.alpha, np.uint8)).tobytes()


def decrypt(cipher: bytes, key: QotpKey) -> bytes:
    """(X^alpha Z^beta)^dagger = Z^beta X^alpha undoes the pad; on measured basis states, XOR alpha again."""
    _check(cipher, key)
    return encrypt(cipher, key)


def build_circuit(data_bits: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> QuantumCircuit:
    """Basis-encode `data_bits` (qubit i holds bit i), apply X^alpha then Z^beta, measure every qubit."""
    from qiskit import QuantumCircuit

    n = len(data_bits)
    qc = QuantumCircuit(n, n)
    for i in np.flatnonzero(data_bits).tolist():
        qc.x(i)
    qc.barrier()
    for i in np.flatnonzero(alpha).tolist():
        qc.x(i)
    for i in np.flatnonzero(beta).tolist():
        qc.z(i)
    qc.measure(range(n), range(n))
    return qc


def circuit_encrypt(data: bytes, key: QotpKey, *, seed: int = 0) -> bytes:
    """The same cipher as `encrypt`, from the circuit on qiskit-aer (one shot: the output is a basis
    state). `seed` only fixes the simulator's sampling, which a basis state does not need."""
    _check(data, key)
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    if len(bits) > CIRCUIT_MAX_BITS:
        raise UsageError(f"the circuit path takes at most {CIRCUIT_MAX_BITS} bits, not {len(bits)}")
    from qiskit_aer import AerSimulator

    alpha = np.unpackbits(np.frombuffer(key.alpha, np.uint8))
    beta = np.unpackbits(np.frombuffer(key.beta, np.uint8))
    qc = build_circuit(bits, alpha, beta)
    counts = AerSimulator(method="stabilizer", seed_simulator=seed).run(qc, shots=1).result().get_counts()
    if len(counts) != 1:
        raise SimulationError(f"a basis state measured {len(counts)} different ways: {sorted(counts)[:4]}")
    (outcome,) = counts
    # qiskit prints classical bit 0 last.
    measured = np.array([int(c) for c in reversed(outcome.replace(" ", ""))], dtype=np.uint8)
    return np.packbits(measured).tobytes()


_X = np.array([[0, 1], [1, 0]], dtype=complex)
_Z = np.array([[1, 0], [0, -1]], dtype=complex)
_I = np.eye(2, dtype=complex)


def pad_unitary(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """X^alpha Z^beta on n qubits as a 2^n x 2^n matrix (qubit 0 the leftmost tensor factor). Each qubit's
    factor is X^a Z^b: Z is applied first, as in the paper's Enc = X^alpha Z^beta."""
    out = np.ones((1, 1), dtype=complex)
    for a, b in zip(alpha.tolist(), beta.tolist(), strict=True):
        factor = (_X if a else _I) @ (_Z if b else _I)
        out = np.kron(out, factor)
    return out


def key_averaged_state(rho: np.ndarray) -> np.ndarray:
    """(1 / 4^n) * sum over every key of U rho U^dagger, U = X^alpha Z^beta (Eq. 5): for any n-qubit
    density matrix this is I / 2^n. Exhaustive over the 4^n keys, so for small n only."""
    dim = rho.shape[0]
    n = dim.bit_length() - 1
    if rho.shape != (dim, dim) or 1 << n != dim:
        raise UsageError(f"a density matrix of n qubits is 2^n x 2^n, not {rho.shape}")
    if n > 6:
        raise UsageError(f"the exhaustive average is for n <= 6 qubits, not {n}")
    total = np.zeros_like(rho, dtype=complex)
    for key in range(1 << (2 * n)):
        alpha = np.array([(key >> i) & 1 for i in range(n)], dtype=np.uint8)
        beta = np.array([(key >> (n + i)) & 1 for i in range(n)], dtype=np.uint8)
        u = pad_unitary(alpha, beta)
        total += u @ rho @ u.conj().T
    averaged: np.ndarray = total / (1 << (2 * n))
    return averaged
