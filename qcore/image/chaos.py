"""Keystream from the 9-D Lorenz system of Reiterer et al. (J. Phys. A 31, 7121, 1998).

The key is the initial conditions, never the control parameters: at sigma = 0.5, a = 0.5 the system is
chaotic for r near 14.22 and 15.10 but not at r = 13 (REFERENCE §8), so r stays fixed.

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
  Those bits change many times per step, so they carry the chaotic amplification of the initial bits.
  |x| must stay below 2^12 for the float to hold 40 fraction bits; a violation raises (it would mean the
  integration diverged, which does not happen on this attractor).
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


def _derivative(c: np.ndarray, k: tuple[float, ...]) -> np.ndarray:
    s, r, b1, b2, b3, b4, b5, b6 = k
    c1, c2, c3, c4, c5, c6, c7, c8, c9 = c
    out = np.empty_like(c)
    d = c2 - c4  # the system is written in C2 - C4 wherever it can be, to save operations
    c2c4 = c2 * c4
    c5d = c5 * d
    c9d = c9 * d
    out[0] = -s * b1 * c1 - c2c4 + b4 * (c4 * c4) + b3 * (c3 * c5) - s * b2 * c7
    out[1] = -s * c2 + c1 * c4 - c5d - (0.5 * s) * c9
    out[2] = -s * b1 * c3 + c2c4 - b4 * (c2 * c2) - b3 * (c1 * c5) + s * b2 * c8
    out[3] = -s * c4 - c2 * c3 - c5d + (0.5 * s) * c9
    out[4] = -s * b5 * c5 + 0.5 * (d * (c2 + c4))
    out[5] = -b6 * c6 + c9d
    out[6] = -b1 * c7 - r * c1 + 2.0 * (c5 * c8) - c4 * c9
    out[7] = -b1 * c8 + r * c3 - 2.0 * (c5 * c7) + c2 * c9
    out[8] = -c9 - d * (r + 2.0 * c6) + c4 * c7 - c2 * c8
    return out


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
    return _rk4(state, _coefficients(params), params.h)


def _rk4(y: np.ndarray, k: tuple[float, ...], h: float) -> np.ndarray:
    k1 = _derivative(y, k)
    k2 = _derivative(y + (0.5 * h) * k1, k)
    k3 = _derivative(y + (0.5 * h) * k2, k)
    k4 = _derivative(y + h * k3, k)
    return y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


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
    k = _coefficients(params)
    for _ in range(params.burn_in):
        state = _rk4(state, k, params.h)
    per_step = DIMENSION * n * _BYTES_PER_VALUE
    steps = -(-length // per_step)
    out = np.empty((steps, n, DIMENSION, _BYTES_PER_VALUE), dtype=np.uint8)
    scale = float(2**_FRACTION_BITS)
    for i in range(steps):
        state = _rk4(state, k, params.h)
        mag = np.abs(state)
        if not np.all(mag < _MAX_ABS):  # also catches NaN
            raise ConfigError("params", "Lorenz integration left the safe range; choose a smaller h")
        v = np.ascontiguousarray(np.floor(mag * scale).astype(np.uint64).T)  # (n, 9): trajectory-major
        # Little-endian bytes of each uint64; keep the low four.
        out[i] = v.astype("<u8").view(np.uint8).reshape(n, DIMENSION, 8)[:, :, :_BYTES_PER_VALUE]
    return out.reshape(-1)[:length]
