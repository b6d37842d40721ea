"""The seed paper's quantum feed-forward network (QFNN, Eqs. 20-23, Figs. 3-4): 2-4 qubits, a Hadamard
and CNOT embedding, trainable layers, Adam, trained on an exact statevector.

Feature map (features -> angles), fitted on the training rows only:
1. signed log, s = sign(x) log(1 + |x|): counts and z-scores have heavy tails;
2. standardise each column (training mean and spread);
3. project on the first q principal axes of the CLASS-BALANCED training covariance (insider rows weighted
   so both classes count equally; plain PCA on 0.5 % positives finds only the benign spread), scaled to
   unit variance;
4. angle a_k = arctan(pc_k), in (-pi/2, pi/2), where sin is monotone: an extreme user-day saturates
   instead of wrapping round to look ordinary.

Circuit (qiskit's little-endian order: qubit k is bit k of a basis index):
- embedding: H on every qubit, RZ(a_k) on qubit k, then CNOT k -> k+1 for k = 0 .. q-2 (Fig. 4);
- L trainable layers, each RY(theta) and RZ(theta) on every qubit, then a CNOT ring k -> k+1 mod q
  (for q = 2 one CNOT 0 -> 1);
- readout: p = P(qubit 0 reads 1) = the predicted probability that the user-day is malicious.

Cost: the paper's fidelity cost (Eq. 21) with the target state |y> on the readout qubit, so each row's
fidelity is p_y, and the cost is 1 - (class-balanced mean fidelity). The paper's Eq. 22 layer channels
with partial traces over hidden qubits reduce, for a single readout qubit, to this: the fidelity of the
readout qubit's reduced state with |y>. Class balancing is our addition: with 0.5 % positives the
unweighted mean fidelity is maximised by calling everyone benign. `cost="cross_entropy"` (balanced
log-loss on p) is offered beside it. Gradients are exact parameter-shift derivatives,
dp/dtheta = (p(theta + pi/2) - p(theta - pi/2)) / 2, and the optimiser is Adam on balanced mini-batches.

The numpy path builds the trainable part as one 2^q x 2^q unitary (gate matrices as qiskit defines
them: RY(t) = [[c, -s], [s, c]], RZ(t) = diag(e^{-it/2}, e^{it/2}) with c, s = cos, sin(t/2)), so a
row costs one product state, one permutation and one small matrix-vector product. `circuit` builds the
same circuit in qiskit (for the equality test and the finite-shot evaluation on qiskit-aer in `shots`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DecodeError
from .features import FeatureSet, feature_set

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

MODEL_FORMAT = "qlink-qfnn"
MODEL_VERSION = 1
MAX_MODEL_BYTES = 1 << 20
"""A model file is a few kilobytes; anything larger is refused before parsing."""
COSTS = ("fidelity", "cross_entropy")

_H = np.array([[1, 1], [1, -1]], dtype=np.complex128) / math.sqrt(2)


def ry(theta: float) -> np.ndarray:
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    return np.array([[c, -s], [s, c]], dtype=np.complex128)


def rz(theta: float) -> np.ndarray:
    return np.diag([np.exp(-0.5j * theta), np.exp(0.5j * theta)])


def _on_qubit(gate: np.ndarray, k: int, q: int) -> np.ndarray:
    # little-endian: qubit k is the k-th least significant bit, so it sits k places from the right.
    return np.kron(np.kron(np.eye(2 ** (q - 1 - k)), gate), np.eye(2**k))


def _apply(gate: np.ndarray, k: int, q: int, m: np.ndarray) -> np.ndarray:
    """gate-on-qubit-k @ m without building the full matrix (m is 2^q x anything)."""
    view = m.reshape(2 ** (q - 1 - k), 2, 2**k, m.shape[1])
    return np.asarray(np.einsum("ij,ajbc->aibc", gate, view).reshape(m.shape))


def _cnot_perm(control: int, target: int, q: int) -> np.ndarray:
    """Index permutation of a CNOT: new_state = state[..., perm]."""
    idx = np.arange(2**q)
    return np.where((idx >> control) & 1, idx ^ (1 << target), idx)


def _ring(q: int) -> list[tuple[int, int]]:
    return [(0, 1)] if q == 2 else [(k, (k + 1) % q) for k in range(q)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transform:
    """Features -> angles (module docstring, steps 1-4)."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    """(q, features): the principal axes, rows."""
    pc_scale: np.ndarray

    def angles(self, x: np.ndarray) -> np.ndarray:
        s = np.sign(x) * np.log1p(np.abs(x))
        pcs = ((s - self.mean) / self.scale) @ self.components.T
        return np.asarray(np.arctan(pcs / self.pc_scale))


def fit_transform(x: np.ndarray, y: np.ndarray, qubits: int) -> Transform:
    s = np.sign(x) * np.log1p(np.abs(x))
    mean = s.mean(axis=0)
    scale = s.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (s - mean) / scale
    pos = y.astype(bool)
    w = np.where(pos, 0.5 / max(1, pos.sum()), 0.5 / max(1, (~pos).sum()))
    centred = z - (w[:, None] * z).sum(axis=0)
    cov = (centred * w[:, None]).T @ centred
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:qubits]
    components = vectors[:, order].T
    # A deterministic sign: each axis points towards the insiders' mean, so "up" means "more suspicious".
    toward = (z[pos].mean(axis=0) if pos.any() else np.ones(z.shape[1])) @ components.T
    components = components * np.where(toward < 0, -1.0, 1.0)[:, None]
    pc_scale = np.sqrt(np.maximum(values[order], 1e-12))
    return Transform(mean=mean, scale=scale, components=components, pc_scale=pc_scale)


@dataclass(frozen=True, slots=True, kw_only=True)
class QfnnModel:
    """A trained (or initial) network; `score` gives P(malicious) for each row of raw features."""

    feature_set: FeatureSet
    qubits: int
    layers: int
    params: np.ndarray
    """(layers, qubits, 2): the RY and RZ angle of every qubit in every layer."""
    transform: Transform
    cost: str = "fidelity"
    threshold: float | None = None
    """The operating threshold the evaluation chose (1 % false positives on the training users)."""
    _unitary: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.qubits not in (2, 3, 4):
            raise ConfigError("qubits", f"must be 2, 3 or 4, got {self.qubits}")
        if self.cost not in COSTS:
            raise ConfigError("cost", f"must be one of {', '.join(COSTS)}, got {self.cost!r}")
        if self.params.shape != (self.layers, self.qubits, 2):
            raise ConfigError("params", f"shape {self.params.shape} != ({self.layers}, {self.qubits}, 2)")
        object.__setattr__(self, "_unitary", trainable_unitary(self.params, self.qubits))

    def score(self, x: np.ndarray) -> np.ndarray:
        """P(malicious) for each row of `x` (raw features in `feature_set` order)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return readout(embed(self.transform.angles(x), self.qubits) @ self._unitary.T)

    def to_bytes(self) -> bytes:
        t = self.transform
        doc = {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "feature_set": self.feature_set.name,
            "features": list(self.feature_set.names),
            "qubits": self.qubits,
            "layers": self.layers,
            "cost": self.cost,
            "threshold": self.threshold,
            "transform": {
                "mean": t.mean.tolist(),
                "scale": t.scale.tolist(),
                "components": t.components.tolist(),
                "pc_scale": t.pc_scale.tolist(),
            },
            "params": self.params.tolist(),
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> QfnnModel:
        """Parse a model file; anything malformed raises DecodeError naming the problem."""
        if len(data) > MAX_MODEL_BYTES:
            raise DecodeError(f"model file of {len(data)} bytes exceeds {MAX_MODEL_BYTES}")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError(f"model file is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
            raise DecodeError(f"not a {MODEL_FORMAT} model file")
        if doc.get("version") != MODEL_VERSION:
            raise DecodeError(
                f"model version {doc.get('version')!r} unsupported (this reads {MODEL_VERSION})"
            )
        try:
            fs = feature_set(str(doc["feature_set"]))
            if list(doc["features"]) != list(fs.names):
                raise DecodeError(f"model's features differ from feature set '{fs.name}' of this version")
            q, layers = int(doc["qubits"]), int(doc["layers"])
            t = doc["transform"]
            f = len(fs.names)
            transform = Transform(
                mean=_array(t["mean"], (f,), "mean"),
                scale=_array(t["scale"], (f,), "scale"),
                components=_array(t["components"], (q, f), "components"),
                pc_scale=_array(t["pc_scale"], (q,), "pc_scale"),
            )
            threshold = doc["threshold"]
            return cls(
                feature_set=fs,
                qubits=q,
                layers=layers,
                params=_array(doc["params"], (layers, q, 2), "params"),
                transform=transform,
                cost=str(doc["cost"]),
                threshold=None if threshold is None else float(threshold),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DecodeError):
                raise
            raise DecodeError(f"model file field missing or malformed: {exc}") from None


def _array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise DecodeError(f"model field '{name}' has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise DecodeError(f"model field '{name}' holds a non-finite number")
    return arr


# The numpy statevector path -------------------------------------------------------------------------------


def embed(angles: np.ndarray, qubits: int) -> np.ndarray:
    """(rows, 2^q) states after the embedding: H and RZ(a_k) on each qubit (a product state), then the
    CNOT chain."""
    rows = angles.shape[0]
    state = np.ones((rows, 1), dtype=np.complex128)
    for k in range(qubits):  # kron(v_{q-1}, ..., v_0): qubit k is bit k
        v = np.stack([np.exp(-0.5j * angles[:, k]), np.exp(0.5j * angles[:, k])], axis=1) / math.sqrt(2)
        state = (v[:, :, None] * state[:, None, :]).reshape(rows, -1)
    for k in range(qubits - 1):
        state = state[:, _cnot_perm(k, k + 1, qubits)]
    return state


def _stages(params: np.ndarray, qubits: int) -> list[np.ndarray]:
    """The trainable part as full 2^q x 2^q matrices in the order they act: per layer, each qubit's RY
    then RZ, then the ring's CNOTs as one permutation matrix."""
    ring = np.eye(2**qubits, dtype=np.complex128)
    for c, t in _ring(qubits):
        ring = ring[_cnot_perm(c, t, qubits), :]
    out = []
    for layer in params:
        for k in range(qubits):
            out.append(_on_qubit(ry(float(layer[k, 0])), k, qubits))
            out.append(_on_qubit(rz(float(layer[k, 1])), k, qubits))
        out.append(ring)
    return out


def _stage_index(layer: int, k: int, which: int, qubits: int) -> int:
    return layer * (2 * qubits + 1) + 2 * k + which


def trainable_unitary(params: np.ndarray, qubits: int) -> np.ndarray:
    u = np.eye(2**qubits, dtype=np.complex128)
    for stage in _stages(params, qubits):
        u = stage @ u
    return u


def readout(states: np.ndarray) -> np.ndarray:
    """P(qubit 0 reads 1) for each row of states."""
    return np.asarray((np.abs(states[:, 1::2]) ** 2).sum(axis=1))


def statevector(angles: np.ndarray, params: np.ndarray, qubits: int) -> np.ndarray:
    """The full output state of each row (for the comparison with qiskit)."""
    return np.asarray(embed(np.atleast_2d(angles), qubits) @ trainable_unitary(params, qubits).T)


def parameter_shift_gradient(states: np.ndarray, params: np.ndarray, qubits: int) -> np.ndarray:
    """(rows, layers, qubits, 2): dp/dtheta of every row for every parameter, exactly. With the stages
    G_n ... G_1, a shifted network is suffix(i) G_i' prefix(i), so each shift costs two small products."""
    stages = _stages(params, qubits)
    dim = 2**qubits
    prefix = [np.eye(dim, dtype=np.complex128)]
    for stage in stages:
        prefix.append(stage @ prefix[-1])
    suffix = [np.eye(dim, dtype=np.complex128)]
    for stage in reversed(stages):
        suffix.append(suffix[-1] @ stage)
    suffix.reverse()  # suffix[i] = G_n ... G_{i+1}
    grad = np.zeros((states.shape[0], *params.shape))
    for layer, k, which in np.ndindex(params.shape):
        i = _stage_index(layer, k, which, qubits)
        gate = ry if which == 0 else rz
        shifted = []
        for delta in (math.pi / 2, -math.pi / 2):
            moved = _apply(gate(float(params[layer, k, which]) + delta), k, qubits, prefix[i])
            shifted.append(readout(states @ (suffix[i + 1] @ moved).T))
        grad[:, layer, k, which] = (shifted[0] - shifted[1]) / 2
    return grad


def cost_and_slope(p: np.ndarray, y: np.ndarray, cost: str) -> tuple[float, np.ndarray]:
    """The class-balanced cost of predictions p and its derivative with respect to each p."""
    pos = y.astype(bool)
    w = np.where(pos, 0.5 / max(1, pos.sum()), 0.5 / max(1, (~pos).sum()))
    if cost == "fidelity":
        fidelity = np.where(pos, p, 1.0 - p)
        return float(1.0 - (w * fidelity).sum()), np.where(pos, -w, w)
    eps = 1e-9
    q = np.clip(p, eps, 1 - eps)
    loss = -np.where(pos, np.log(q), np.log(1 - q))
    return float((w * loss).sum()), np.where(pos, -w / q, w / (1 - q))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """How to train the QFNN."""

    qubits: int = 4
    """2 to 4 qubits (one angle each)."""
    layers: int = 3
    """Trainable layers after the embedding."""
    steps: int = 150
    """Adam steps."""
    batch: int = 256
    """Rows per step, half insider-days and half benign (drawn with replacement)."""
    learning_rate: float = 0.05
    cost: str = "fidelity"
    """"fidelity" (the paper's Eq. 21, class-balanced) or "cross_entropy"."""


def train(
    x: np.ndarray, y: np.ndarray, fs: FeatureSet, config: TrainConfig, rng: np.random.Generator
) -> tuple[QfnnModel, list[float]]:
    """Fit the feature map and the network; returns the model and the cost after each step (on that
    step's mini-batch)."""
    if config.cost not in COSTS:
        raise ConfigError("cost", f"must be one of {', '.join(COSTS)}, got {config.cost!r}")
    y = y.astype(bool)
    if not y.any() or y.all():
        raise ConfigError("y", "training needs both insider and benign rows")
    transform = fit_transform(x, y, config.qubits)
    states = embed(transform.angles(x), config.qubits)
    params = rng.uniform(-math.pi, math.pi, size=(config.layers, config.qubits, 2))
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    m = np.zeros_like(params)
    v = np.zeros_like(params)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = []
    for step in range(1, config.steps + 1):
        pick = np.concatenate(
            [rng.choice(pos, config.batch // 2), rng.choice(neg, config.batch - config.batch // 2)]
        )
        s, target = states[pick], y[pick]
        p = readout(s @ trainable_unitary(params, config.qubits).T)
        value, slope = cost_and_slope(p, target, config.cost)
        grad = np.tensordot(slope, parameter_shift_gradient(s, params, config.qubits), axes=(0, 0))
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        params = params - config.learning_rate * (m / (1 - beta1**step)) / (
            np.sqrt(v / (1 - beta2**step)) + eps
        )
        history.append(value)
    model = QfnnModel(
        feature_set=fs,
        qubits=config.qubits,
        layers=config.layers,
        params=params,
        transform=transform,
        cost=config.cost,
    )
    return model, history


# qiskit ---------------------------------------------------------------------------------------------------


def circuit(angles: np.ndarray, params: np.ndarray, qubits: int, *, measure: bool = False) -> QuantumCircuit:
    """The same network as a qiskit circuit, for one row of angles (measuring qubit 0 if asked)."""
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(qubits, 1 if measure else 0)
    for k in range(qubits):
        qc.h(k)
        qc.rz(float(angles[k]), k)
    for k in range(qubits - 1):
        qc.cx(k, k + 1)
    for layer in params:
        for k in range(qubits):
            qc.ry(float(layer[k, 0]), k)
            qc.rz(float(layer[k, 1]), k)
        for c, t in _ring(qubits):
            qc.cx(c, t)
    if measure:
        qc.measure(0, 0)
    return qc
