"""Vectorised measurement: the outcome distributions written out in closed form and sampled with numpy."""

from __future__ import annotations

import numpy as np

from ..rng import bernoulli, random_bits

_PI8 = np.pi / 8


class NumpyBackend:
    name = "numpy"

    def measure_photons(
        self,
        bits: np.ndarray,
        bases: np.ndarray,
        meas_bases: np.ndarray,
        flip: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        n = bits.size
        # Same basis: the prepared bit, flipped by misalignment. Other basis: a fair coin (and a flip of a
        # fair coin is still a fair coin, so one draw serves both cases).
        coin = random_bits(rng, n)
        same = bases == meas_bases
        out = np.where(same, bits, coin).astype(np.uint8)
        if flip > 0.0:
            out ^= (bernoulli(rng, flip, n) & same).astype(np.uint8)
        return out

    def measure_pairs(
        self,
        alice_angle8: np.ndarray,
        bob_angle8: np.ndarray,
        eve_angle8: np.ndarray,
        flip_a: float,
        flip_b: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = alice_angle8.size
        theta_a = alice_angle8.astype(np.float64) * _PI8
        theta_b = bob_angle8.astype(np.float64) * _PI8
        alice = np.empty(n, dtype=np.uint8)
        bob = np.empty(n, dtype=np.uint8)
        eve = np.zeros(n, dtype=np.uint8)

        honest = eve_angle8 < 0
        if honest.any():
            # Alice's outcome is a fair coin; Bob agrees with probability cos^2(theta_a - theta_b),
            # and each Pauli-Y error on either arm flips the agreement.
            a = random_bits(rng, int(honest.sum()))
            p_same = np.cos(theta_a[honest] - theta_b[honest]) ** 2
            differ = (rng.random(a.size) >= p_same).astype(np.uint8)
            differ ^= bernoulli(rng, flip_a, a.size).astype(np.uint8)
            differ ^= bernoulli(rng, flip_b, a.size).astype(np.uint8)
            alice[honest] = a
            bob[honest] = a ^ differ

        tapped = ~honest
        if tapped.any():
            # Eve's measurement of Bob's photon collapses the pair: both photons now carry the linear
            # polarisation phi she saw. Alice measures her photon; Bob gets Eve's re-prepared photon.
            m = int(tapped.sum())
            r = random_bits(rng, m)
            phi = eve_angle8[tapped].astype(np.float64) * _PI8 + r * (np.pi / 2)
            a = (rng.random(m) >= np.cos(theta_a[tapped] - phi) ** 2).astype(np.uint8)
            b = (rng.random(m) >= np.cos(theta_b[tapped] - phi) ** 2).astype(np.uint8)
            a ^= bernoulli(rng, flip_a, m).astype(np.uint8)
            b ^= bernoulli(rng, flip_b, m).astype(np.uint8)
            alice[tapped] = a
            bob[tapped] = b
            eve[tapped] = r
        return alice, bob, eve
