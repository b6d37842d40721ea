"""Keystream from the 9-D Lorenz system of Reiterer et al. (J. Phys. A 31, 7121, 1998).

The key is the initial conditions, never the control parameters: at sigma = 0.5, a = 0.5 the system is
chaotic for r near 14.22 and 15.10 but not at r = 13 (docs/references.md §8), so r stays fixed.

How bytes come out, and why they are bit-identical across runs:
- HKDF-SHA256 (from `cryptography`) turns (key, nonce, context) into 48-bit integers, six bytes per
  coordinate; each becomes an initial condition u * 2^-48 * 2 - 1 in [-1, 1). HKDF output is limited to
  255 blocks per call, so the material is expanded in chunks whose `info` carries the chunk index.
- `trajectories` copies of the system are advanced together with numpy by classical RK4 (step `h`): the
  state is a (9, N) float64 array and every operation is an elementwise numpy ufunc in a fixed order.
  IEEE 754 makes each such operation correctly rounded, so no BLAS call, no reduction and no fused
  multiply-add can change a bit between runs or machines.
- After `burn_in` steps (the initial conditions are already full-entropy HKDF output; the burn-in makes
  every output bit a non-linear function of all nine of them, it does not wait for the attractor),
  each further step yields, for every coordinate x, v = floor(|x| * 2^40) (exact: a power-of-two scale
  and a floor), and its four low bytes, least significant first: fraction bits 2^-9 to 2^-40 of |x|.
  |x| must stay below 2^12 for the float to hold 40 fraction bits; a violation raises (it would mean the
  integration diverged, which does not happen on this attractor).
- What makes a flipped key bit, another nonce or another image give an unrelated stream is HKDF, which
  gives unrelated initial conditions; the chaos does not. With a largest Lyapunov exponent of ~0.05 per
  unit time the Lyapunov time is ~20 time units (2000 steps at h = 0.01). Measured (median over 512
  trajectories), a perturbation of the initial conditions grows only ~2.5x over the 32 burn-in steps
  and ~3x by the end of a 512x512 RGB stream. So no affordable burn-in would make nearby initial
  conditions diverge, and none is relied on.
- min(`trajectories`, ceil(length / 36)) trajectories run, so a short stream pays for a short burn-in.
- Output order: step-major, then trajectory, then coordinate, then byte (documented so the stream is
  reproducible by an independent implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import ConfigError

DIMENSION = 9
_BYTES_PER_IC = 6  # 48 bits per initial coordinate
_HKDF_MAX = 255 * 32
_FRACTION_BITS = 40
_BYTES_PER_VALUE = 4
_MAX_ABS = float(2**12)
_LABEL = b"qlink image v1 lorenz9 ic"
_CHUNK_STEPS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class LorenzParams:
    """Parameters of the 9-D Lorenz keystream. Changing any of them changes every keystream byte."""

    sigma: float = 0.5
    """Prandtl number s."""
    r: float = 15.10
    """Reduced Rayleigh number; 15.10 is in the chaotic window (largest Lyapunov exponent ~ +0.05)."""
    a: float = 0.5
    """Aspect ratio of the convection cell."""
    h: float = 0.01
    """RK4 step."""
    burn_in: int = 32
    """Steps discarded before the first output byte."""
    trajectories: int = 1024
    """Trajectories advanced together; the numpy arrays are (9, trajectories)."""

    def __post_init__(self) -> None:
        if not (self.h > 0.0 and self.h <= 0.05):
            raise ConfigError("h", "must lie in (0, 0.05]")
        if self.burn_in < 0:
            raise ConfigError("burn_in", "must be >= 0")
        if self.trajectories < 1:
            raise ConfigError("trajectories", "must be >= 1")


DEFAULT_PARAMS = LorenzParams()


def initial_conditions(key: bytes, salt: bytes, context: bytes, trajectories: int) -> np.ndarray:
    """(9, trajectories) float64 initial conditions in [-1, 1) derived from the key by HKDF-SHA256."""
    need = trajectories * DIMENSION * _BYTES_PER_IC
    chunks = []
    for index in range(-(-need // _HKDF_MAX)):
        length = min(_HKDF_MAX, need - index * _HKDF_MAX)
        info = _LABEL + index.to_bytes(4, "big") + context
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info)
        chunks.append(hkdf.derive(key))
    raw = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(DIMENSION, trajectories, _BYTES_PER_IC)
    words = np.zeros((DIMENSION, trajectories), dtype=np.uint64)
    for b in range(_BYTES_PER_IC):
        words = (words << np.uint64(8)) | raw[:, :, b].astype(np.uint64)
    return words.astype(np.float64) * (2.0 / 2.0**48) - 1.0


class _RK4:
    """Classical RK4 for (9, n) states, advanced in place with preallocated buffers.

    Each step performs exactly the float64 operations of the textbook expression, in the same order, so
    the result is bit-identical to `y + h/6 (k1 + 2 k2 + 2 k3 + k4)` evaluated with fresh temporaries.
    At the widths used here a step is under 300 ufunc calls on short rows, so the cost is per-call
    overhead, not arithmetic: every call writes into a buffer (`out=`), rows are split once, and the
    constants are 0-d float64 arrays (numpy takes those faster than Python floats; same value, same
    rounding).
    """

    __slots__ = ("_acc", "_c", "_probe", "_probe_rows", "_stage_rows", "_stages", "_tmp")

    def __init__(self, n: int, params: LorenzParams) -> None:
        s, r, b1, b2, b3, b4, b5, b6 = _coefficients(params)
        h = params.h
        values = (-s * b1, b3, b4, s * b2, -s, 0.5 * s, -s * b5, 0.5, -b6, -b1, r, 2.0, 0.5 * h, h, h / 6.0)
        self._c = tuple(np.array(v, dtype=np.float64) for v in values)
        self._tmp = tuple(np.empty((5, n)))
        self._probe = np.empty((DIMENSION, n))
        self._probe_rows = tuple(self._probe)
        self._stages = tuple(np.empty((4, DIMENSION, n)))
        self._stage_rows = tuple(tuple(k) for k in self._stages)
        self._acc = np.empty((DIMENSION, n))

    def _derivative(self, c: tuple[np.ndarray, ...], out: tuple[np.ndarray, ...]) -> None:
        # The system is written in d = C2 - C4 wherever it can be. Every product is rounded on its own
        # before it is added (no fused multiply-add), which keeps the stream reproducible bit for bit.
        m_sb1, b3, b4, sb2, m_s, half_s, m_sb5, half, m_b6, m_b1, r, two = self._c[:12]
        mul, add, sub = np.multiply, np.add, np.subtract
        c1, c2, c3, c4, c5, c6, c7, c8, c9 = c
        o1, o2, o3, o4, o5, o6, o7, o8, o9 = out
        d, c2c4, c5d, c9d, t = self._tmp
        sub(c2, c4, out=d)
        mul(c2, c4, out=c2c4)
        mul(c5, d, out=c5d)
        mul(c9, d, out=c9d)
        # dC1 = -s b1 C1 - C2 C4 + b4 C4^2 + b3 C3 C5 - s b2 C7
        mul(c1, m_sb1, out=o1)
        sub(o1, c2c4, out=o1)
        mul(c4, c4, out=t)
        add(o1, mul(t, b4, out=t), out=o1)
        mul(c3, c5, out=t)
        add(o1, mul(t, b3, out=t), out=o1)
        sub(o1, mul(c7, sb2, out=t), out=o1)
        # dC3 = -s b1 C3 + C2 C4 - b4 C2^2 - b3 C1 C5 + s b2 C8
        mul(c3, m_sb1, out=o3)
        add(o3, c2c4, out=o3)
        mul(c2, c2, out=t)
        sub(o3, mul(t, b4, out=t), out=o3)
        mul(c1, c5, out=t)
        sub(o3, mul(t, b3, out=t), out=o3)
        add(o3, mul(c8, sb2, out=t), out=o3)
        # dC2 = -s C2 + C1 C4 - C5 d - s C9 / 2 and dC4 = -s C4 - C2 C3 - C5 d + s C9 / 2 (o9: scratch)
        mul(c9, half_s, out=o9)
        mul(c2, m_s, out=o2)
        add(o2, mul(c1, c4, out=t), out=o2)
        sub(o2, c5d, out=o2)
        sub(o2, o9, out=o2)
        mul(c4, m_s, out=o4)
        sub(o4, mul(c2, c3, out=t), out=o4)
        sub(o4, c5d, out=o4)
        add(o4, o9, out=o4)
        # dC5 = -s b5 C5 + d (C2 + C4) / 2
        add(c2, c4, out=t)
        mul(d, t, out=t)
        mul(c5, m_sb5, out=o5)
        add(o5, mul(t, half, out=t), out=o5)
        # dC6 = -b6 C6 + C9 d
        mul(c6, m_b6, out=o6)
        add(o6, c9d, out=o6)
        # dC7 = -b1 C7 - r C1 + 2 C5 C8 - C4 C9
        mul(c7, m_b1, out=o7)
        sub(o7, mul(c1, r, out=t), out=o7)
        mul(c5, c8, out=t)
        add(o7, mul(t, two, out=t), out=o7)
        sub(o7, mul(c4, c9, out=t), out=o7)
        # dC8 = -b1 C8 + r C3 - 2 C5 C7 + C2 C9
        mul(c8, m_b1, out=o8)
        add(o8, mul(c3, r, out=t), out=o8)
        mul(c5, c7, out=t)
        sub(o8, mul(t, two, out=t), out=o8)
        add(o8, mul(c2, c9, out=t), out=o8)
        # dC9 = -C9 - d (r + 2 C6) + C4 C7 - C2 C8
        mul(c6, two, out=t)
        add(t, r, out=t)
        mul(d, t, out=t)
        np.negative(c9, out=o9)
        sub(o9, t, out=o9)
        add(o9, mul(c4, c7, out=t), out=o9)
        sub(o9, mul(c2, c8, out=t), out=o9)

    def step(self, y: np.ndarray) -> None:
        """Advance `y` (9, n) by one step, in place."""
        mul, add = np.multiply, np.add
        two, half_h, h, sixth_h = self._c[11:]
        probe, rows, acc = self._probe, self._probe_rows, self._acc
        k1, k2, k3, k4 = self._stages
        r1, r2, r3, r4 = self._stage_rows
        self._derivative(tuple(y), r1)
        for k, weight, out in ((k1, half_h, r2), (k2, half_h, r3), (k3, h, r4)):
            add(mul(k, weight, out=probe), y, out=probe)  # y + weight k, as written
            self._derivative(rows, out)
        # ((k1 + 2 k2) + 2 k3) + k4, then times h/6, then plus y: the textbook order.
        add(k1, mul(k2, two, out=acc), out=acc)
        add(acc, mul(k3, two, out=probe), out=acc)
        add(acc, k4, out=acc)
        add(y, mul(acc, sixth_h, out=acc), out=y)


def _coefficients(p: LorenzParams) -> tuple[float, ...]:
    a2 = p.a * p.a
    b1 = 4.0 * (1.0 + a2) / (1.0 + 2.0 * a2)
    b2 = (1.0 + 2.0 * a2) / (2.0 * (1.0 + a2))
    b3 = 2.0 * (1.0 - a2) / (1.0 + a2)
    b4 = a2 / (1.0 + a2)
    b5 = 8.0 * a2 / (1.0 + 2.0 * a2)
    b6 = 4.0 / (1.0 + 2.0 * a2)
    return (p.sigma, p.r, b1, b2, b3, b4, b5, b6)


def rk4_step(state: np.ndarray, params: LorenzParams = DEFAULT_PARAMS) -> np.ndarray:
    """One classical RK4 step of every trajectory in the (9, N) `state`; returns the new state."""
    y = np.array(state, dtype=np.float64, order="C", copy=True)
    if y.ndim != 2 or y.shape[0] != DIMENSION:
        raise ConfigError("state", f"must have shape (9, N), not {y.shape}")
    _RK4(y.shape[1], params).step(y)
    return y


def keystream(
    key: bytes, salt: bytes, context: bytes, length: int, params: LorenzParams = DEFAULT_PARAMS
) -> np.ndarray:
    """`length` keystream bytes (uint8) from the 9-D Lorenz system; see the module docstring for the rule.

    `salt` is the per-image nonce and `context` binds everything else the stream must depend on.
    """
    if length < 0:
        raise ConfigError("length", "must be >= 0")
    if not key:
        raise ConfigError("key", "must not be empty")
    # Short streams need few trajectories; fewer also means a cheaper burn-in.
    n = max(1, min(params.trajectories, -(-length // (DIMENSION * _BYTES_PER_VALUE))))
    state = initial_conditions(key, salt, context, n)
    rk4 = _RK4(n, params)
    for _ in range(params.burn_in):
        rk4.step(state)
    steps = -(-length // (DIMENSION * n * _BYTES_PER_VALUE))
    # Little-endian uint32 words, (step, trajectory, coordinate): their bytes are the output order.
    words = np.empty((steps, n, DIMENSION), dtype="<u4")
    # States are converted a chunk of steps at a time: few numpy calls, bounded memory.
    chunk = np.empty((min(steps, _CHUNK_STEPS), DIMENSION, n))
    scale = float(2**_FRACTION_BITS)
    for first in range(0, steps, _CHUNK_STEPS):
        count = min(_CHUNK_STEPS, steps - first)
        for j in range(count):
            rk4.step(state)
            chunk[j] = state
        mag = np.abs(chunk[:count], out=chunk[:count])
        if not np.all(mag < _MAX_ABS):  # also catches NaN
            raise ConfigError("params", "Lorenz integration left the safe range; choose a smaller h")
        mag *= scale  # exact: a power of two
        # Truncation is floor here (non-negative, below 2^52); assigning the uint64 to uint32 keeps its
        # low 32 bits, i.e. its four low bytes.
        words[first : first + count] = mag.astype(np.uint64).transpose(0, 2, 1)
    return words.view(np.uint8).reshape(-1)[:length]
