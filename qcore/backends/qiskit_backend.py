"""Measurement on qiskit-aer: every photon is a qubit in a real circuit, every fibre error comes from an Aer
noise model.

How a call is simulated:
- Photons are grouped by configuration. BB84 has 8 (bit, basis, measurement basis) configurations and E91
  one per (Alice angle, Bob angle, Eve angle or none). Each configuration present gets one small circuit,
  built once and cached on the backend, and runs with as many shots as it has photons.
- The fibre is a labelled identity (``UnitaryGate(I, label="fiber")``). The noise model attaches a Pauli-Y
  error with probability `flip` to that label, so Aer applies the misalignment; nothing is flipped by hand.
  The circuits use only gates Aer executes natively (x, h, ry, cx, unitary), so they are never transpiled:
  optimisation level 2 or more would delete the identity and the noise with it.
- The method is ``density_matrix``: Pauli noise becomes part of the state, and when every measurement is at
  the end Aer samples all shots from the final probabilities (its measurement-sampling fast path).
  Eve's mid-circuit measurement defeats that path, so tapped pairs are simulated shot by shot, which is
  about 20 times slower; ``defer_eve_measurement=True`` trades it for the equivalent deferred measurement.
- Aer takes one shot count per ``run``. Groups of similar size share one call at the largest size and each
  keeps a uniformly random subset of its circuit's shots (a hypergeometric draw from the counts).
- The shots of one circuit are exchangeable, so their counts and a random permutation drawn from `rng`
  hand out outcomes with the same joint law as per-shot memory, at a fraction of its cost.
- ``seed_simulator`` is drawn from `rng`, so a seeded generator reproduces every outcome.

qiskit is imported only when a backend is constructed or a circuit is built, so importing this module is
cheap and ``qlinkmed.qcore.backends`` never pulls qiskit in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, SimulationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from qiskit import QuantumCircuit
    from qiskit_aer.noise import NoiseModel

FIBER_LABEL = "fiber"
"""Instruction label of the fibre step; the noise model attaches the misalignment error to it."""

_PI8 = np.pi / 8
_ANGLE_STEPS = 8  # angles are k * pi/8 with k in 0..7; k = 8 is the same linear polarisation as k = 0
_NATIVE_GATES = ("x", "h", "ry", "cx", "unitary")

# Batching groups into Aer calls: a group joins a call whose shot count exceeds its size by at most this many
# shots or this fraction. One extra call costs about 2 ms, as much as sampling ~5,000 shots.
_SHOT_SLACK = 4096
_SHOT_SLACK_FRACTION = 0.125

_NOISE_CACHE_SIZE = 16


class QiskitBackend:
    """BB84 photons and E91 pairs measured in qiskit-aer circuits (see the module docstring)."""

    name = "qiskit"

    def __init__(self, *, defer_eve_measurement: bool = False) -> None:
        """`defer_eve_measurement`: record Eve's outcome by a CNOT onto an ancilla measured at the end
        instead of a mid-circuit measurement. By the deferred-measurement principle the outcome law is the
        same, and Aer can sample it in one pass."""
        from qiskit_aer import AerSimulator

        self.defer_eve_measurement = defer_eve_measurement
        # max_parallel_experiments=0: run the circuits of one call in parallel on all cores.
        self._simulator = AerSimulator(method="density_matrix", max_parallel_experiments=0)
        self._photon_circuits: dict[int, QuantumCircuit] = {}
        self._pair_circuits: dict[int, QuantumCircuit] = {}
        self._noise_models: dict[tuple[float, ...], NoiseModel | None] = {}

    # -- the contract ---------------------------------------------------------------------------------------

    def measure_photons(
        self,
        bits: np.ndarray,
        bases: np.ndarray,
        meas_bases: np.ndarray,
        flip: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        bits, bases, meas_bases = _check_arrays(
            {"bits": bits, "bases": bases, "meas_bases": meas_bases}, low=0, high=1
        )
        flip = _check_probability("flip", flip)
        _check_rng(rng)
        # Configuration key: bit | basis << 1 | measurement basis << 2.
        keys = bits.astype(np.uint8) | (bases.astype(np.uint8) << 1) | (meas_bases.astype(np.uint8) << 2)
        return self._run_grouped(
            keys,
            n_keys=8,
            circuit_for=self._photon_circuit,
            noise_model=self._noise_model((flip,)),
            n_outcomes=2,
            rng=rng,
        )

    def measure_pairs(
        self,
        alice_angle8: np.ndarray,
        bob_angle8: np.ndarray,
        eve_angle8: np.ndarray,
        flip_a: float,
        flip_b: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        alice_angle8, bob_angle8 = _check_arrays(
            {"alice_angle8": alice_angle8, "bob_angle8": bob_angle8}, low=0, high=_ANGLE_STEPS - 1
        )
        (eve_angle8,) = _check_arrays({"eve_angle8": eve_angle8}, low=None, high=_ANGLE_STEPS - 1)
        if eve_angle8.size != alice_angle8.size:
            raise ConfigError("eve_angle8", f"length {eve_angle8.size} differs from {alice_angle8.size}")
        flip_a = _check_probability("flip_a", flip_a)
        flip_b = _check_probability("flip_b", flip_b)
        _check_rng(rng)
        # Configuration key: alice + 8 bob + 64 eve', with eve' = 0 for no Eve and angle + 1 otherwise.
        eve_code = np.where(eve_angle8 < 0, 0, eve_angle8.astype(np.int16) + 1)
        keys = (alice_angle8.astype(np.int16) + 8 * bob_angle8.astype(np.int16) + 64 * eve_code).astype(
            np.int16
        )
        codes = self._run_grouped(
            keys,
            n_keys=8 * 8 * 9,
            circuit_for=self._pair_circuit,
            noise_model=self._noise_model((flip_a, flip_b)),
            n_outcomes=8,
            rng=rng,
        )
        # Classical bits: 0 Alice, 1 Bob, 2 Eve (never written, so 0, when she is absent).
        return codes & 1, (codes >> 1) & 1, codes >> 2

    # -- running groups -------------------------------------------------------------------------------------

    def _run_grouped(
        self,
        keys: np.ndarray,
        *,
        n_keys: int,
        circuit_for: Callable[[int], QuantumCircuit],
        noise_model: NoiseModel | None,
        n_outcomes: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Run one circuit per configuration key present and return each element's outcome code (the
        integer read from the classical register)."""
        n = keys.size
        out = np.empty(n, dtype=np.uint8)
        if n == 0:
            return out
        sizes = np.bincount(keys, minlength=n_keys)
        present = np.flatnonzero(sizes)
        dealt: dict[int, np.ndarray] = {}
        for batch, shots in _batches(present, sizes):
            circuits = [circuit_for(int(k)) for k in batch]
            result = self._simulator.run(
                circuits,
                shots=shots,
                seed_simulator=int(rng.integers(0, 2**63)),
                noise_model=noise_model,
            ).result()
            if not result.success:
                raise SimulationError(f"qiskit-aer simulation failed: {result.status}")
            for i, k in enumerate(batch):
                counts = np.zeros(n_outcomes, dtype=np.int64)
                for hex_key, count in result.data(i)["counts"].items():
                    counts[int(hex_key, 16)] = count
                dealt[int(k)] = _deal(rng, counts, int(sizes[k]))
        # A stable sort lists each group's members in key order; the dealt codes follow the same order.
        order = np.argsort(keys, kind="stable")
        out[order] = np.concatenate([dealt[int(k)] for k in present])
        return out

    def _noise_model(self, flips: tuple[float, ...]) -> NoiseModel | None:
        """Noise model giving qubit i of every circuit a Pauli-Y error with probability flips[i] on the
        fibre step; None when every arm is perfect."""
        if flips in self._noise_models:
            return self._noise_models[flips]
        from qiskit_aer.noise import NoiseModel, pauli_error

        model: NoiseModel | None = None
        if any(f > 0.0 for f in flips):
            model = NoiseModel(basis_gates=list(_NATIVE_GATES))
            for qubit, flip in enumerate(flips):
                if flip > 0.0:
                    terms = [("Y", flip), ("I", 1.0 - flip)] if flip < 1.0 else [("Y", 1.0)]
                    model.add_quantum_error(pauli_error(terms), FIBER_LABEL, [qubit])
        if len(self._noise_models) >= _NOISE_CACHE_SIZE:
            self._noise_models.clear()
        self._noise_models[flips] = model
        return model

    # -- circuits -------------------------------------------------------------------------------------------

    def _photon_circuit(self, key: int) -> QuantumCircuit:
        circuit = self._photon_circuits.get(key)
        if circuit is None:
            circuit = self._photon_circuits[key] = _build_photon_circuit(key & 1, (key >> 1) & 1, key >> 2)
        return circuit

    def _pair_circuit(self, key: int) -> QuantumCircuit:
        circuit = self._pair_circuits.get(key)
        if circuit is None:
            alice, bob, eve = key % 8, (key // 8) % 8, key // 64 - 1
            circuit = _build_pair_circuit(alice, bob, eve, deferred=self.defer_eve_measurement)
            self._pair_circuits[key] = circuit
        return circuit


def _fiber() -> Any:
    from qiskit.circuit.library import UnitaryGate

    return UnitaryGate(np.eye(2), label=FIBER_LABEL)


def _build_photon_circuit(bit: int, basis: int, meas_basis: int) -> QuantumCircuit:
    """|bit> in the Z basis (H/V) or the X basis (D/A), the fibre, then a measurement in `meas_basis`."""
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(1, 1, name=f"bb84_bit{bit}_basis{basis}_meas{meas_basis}")
    if bit:
        circuit.x(0)
    if basis:
        circuit.h(0)
    circuit.append(_fiber(), [0])
    if meas_basis:
        circuit.h(0)
    circuit.measure(0, 0)
    return circuit


def _build_pair_circuit(alice: int, bob: int, eve: int, *, deferred: bool) -> QuantumCircuit:
    """|Phi+> on (Alice = qubit 0, Bob = qubit 1); Eve (if eve >= 0) measures Bob's photon at her angle and
    re-prepares it before Bob's fibre; each party measures polarisation angle theta as Ry(-2 theta) then Z.
    Classical bits: 0 Alice, 1 Bob, 2 Eve."""
    from qiskit import QuantumCircuit

    theta_a, theta_b, theta_e = alice * _PI8, bob * _PI8, eve * _PI8
    n_qubits = 3 if (eve >= 0 and deferred) else 2
    circuit = QuantumCircuit(n_qubits, 3, name=f"e91_a{alice}_b{bob}_e{eve if eve >= 0 else 'none'}")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.append(_fiber(), [0])
    if eve >= 0:
        circuit.ry(-2 * theta_e, 1)
        if deferred:
            circuit.cx(1, 2)  # the ancilla keeps Eve's record; it is only measured at the end
        else:
            circuit.measure(1, 2)
        # Rotating back re-prepares the polarisation she saw: theta_e, or theta_e + pi/2.
        circuit.ry(2 * theta_e, 1)
    circuit.append(_fiber(), [1])
    circuit.ry(-2 * theta_a, 0)
    circuit.ry(-2 * theta_b, 1)
    circuit.measure(0, 0)
    circuit.measure(1, 1)
    if n_qubits == 3:
        circuit.measure(2, 2)
    return circuit


def _batches(present: np.ndarray, sizes: np.ndarray) -> list[tuple[list[int], int]]:
    """Split the present keys into Aer calls (keys, shots): largest groups first, a group joining the
    current call while its size is within the slack of the call's shot count."""
    batches: list[tuple[list[int], int]] = []
    for k in sorted(present.tolist(), key=lambda k: -int(sizes[k])):
        size = int(sizes[k])
        if batches:
            keys, shots = batches[-1]
            if shots - size <= max(_SHOT_SLACK, _SHOT_SLACK_FRACTION * shots):
                keys.append(k)
                continue
        batches.append(([k], size))
    return batches


def _deal(rng: np.random.Generator, counts: np.ndarray, size: int) -> np.ndarray:
    """Outcome codes for `size` photons of one configuration, from the counts of `counts.sum() >= size`
    shots of its circuit.

    The shots of one circuit are independent and identically distributed, hence exchangeable: any `size` of
    them are a fair sample (a multivariate hypergeometric draw from the counts), and a uniformly random
    permutation of their outcomes has the same law as per-shot memory."""
    if int(counts.sum()) > size:
        counts = rng.multivariate_hypergeometric(counts, size)
    codes = np.repeat(np.arange(counts.size, dtype=np.uint8), counts)
    rng.shuffle(codes)
    return codes


# -- validation ----------------------------------------------------------------------------------------------


def _check_arrays(arrays: dict[str, Any], *, low: int | None, high: int) -> list[np.ndarray]:
    """1-D integer (or bool) arrays of one length with values in [low, high]; low=None allows any negative
    value (it means "absent")."""
    checked: list[np.ndarray] = []
    length: int | None = None
    for field, value in arrays.items():
        array = np.asarray(value)
        if array.ndim != 1:
            raise ConfigError(field, f"expected a 1-D array, got shape {array.shape}")
        if array.dtype.kind not in "biu" and array.size:
            raise ConfigError(field, f"expected integers, got dtype {array.dtype}")
        if length is None:
            length = array.size
        elif array.size != length:
            raise ConfigError(field, f"length {array.size} differs from {length}")
        if array.size:
            lowest, highest = int(array.min()), int(array.max())
            if (low is not None and lowest < low) or highest > high:
                bound = f"[{low}, {high}]" if low is not None else f"a negative value or [0, {high}]"
                raise ConfigError(field, f"values must be in {bound}, got {lowest}..{highest}")
        checked.append(array.astype(np.int16, copy=False) if array.dtype.kind == "b" else array)
    return checked


def _check_probability(field: str, value: float) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected a probability, got {value!r}") from None
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ConfigError(field, f"must be a probability in [0, 1], got {value!r}")
    return p


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError("rng", f"expected a numpy.random.Generator, got {type(rng).__name__}")
