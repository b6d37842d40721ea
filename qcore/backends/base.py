"""The contract every measurement backend keeps.

Conventions shared by all backends:
- BB84 states are |bit> in basis 0 (rectilinear: H = 0, V = 1) or basis 1 (diagonal: D = 0, A = 1).
- Polarisation angles for E91 are integers in units of pi/8 (Alice 0, 1, 2; Bob 1, 2, 3; Eve 0 or 2).
  Outcome 0 means the photon passed a polariser at that angle.
- Pairs are emitted in |Phi+> = (|HH> + |VV>)/sqrt(2): equal angles give equal outcomes.
- Misalignment in a fibre arm is a Pauli-Y error with probability `flip`: it maps every linear
  polarisation to its orthogonal one, so it flips the outcome in any linear basis.
- An eavesdropper measures and re-prepares; a backend gives it no other access to the states.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class MeasurementBackend(Protocol):
    name: str

    def measure_photons(
        self,
        bits: np.ndarray,
        bases: np.ndarray,
        meas_bases: np.ndarray,
        flip: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Measure single photons prepared as (bits, bases) in `meas_bases`; return uint8 outcomes."""
        ...

    def measure_pairs(
        self,
        alice_angle8: np.ndarray,
        bob_angle8: np.ndarray,
        eve_angle8: np.ndarray,
        flip_a: float,
        flip_b: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Measure |Phi+> pairs. Where eve_angle8 >= 0 Eve measures Bob's photon at that angle and
        re-prepares what she saw before Bob's fibre arm. Returns (alice, bob, eve) uint8 outcomes; eve's
        entries are 0 where she was absent."""
        ...
