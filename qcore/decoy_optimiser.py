"""Decoy-state parameters chosen for the link: intensities, class probabilities and the basis bias that
maximise the
expected Lim 2014 finite-key length for a channel, a block size and the security parameters.

The objective is the length :func:`finite_decoy.lim2014_length` gives on the *expected* counts of the
emulator's click model (:func:`channel_model.predict_bb84`, after-pulses from the mixed train), with the
error-correction leak at ``f_ec`` times the Shannon limit. Both parties choose basis 0 (X) with
probability p_X (Lim 2014; qcore.sifting: X matches are the key, Z matches estimate the phase error), so
a share p_X^2 of each class's pulses is keyed and (1 - p_X)^2 tested. The vacuum-like intensity stays
fixed (it only has to be small).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
from scipy.optimize import minimize

from .channel_model import ChannelModel, predict_bb84
from .errors import ConfigError
from .finite_decoy import Lim2014Result, lim2014_length
from .params import DecoySource
from .theory import binary_entropy

__all__ = ["MU3", "expected_decoy_length", "optimise"]

MU3 = 2e-4
"""The vacuum-like intensity; the bounds of Lim 2014 only need it well below mu_2."""

# Search box in coordinates that satisfy the constraints by construction: (mu1, mu2/mu1, p1, p2/(1-p1),
# p_X). p_X stays below 0.97 so that the test basis keeps a few per cent of the matches.
_BOUNDS = ((0.05, 1.2), (0.02, 0.9), (0.05, 0.97), (0.05, 0.95), (0.5, 0.97))
_GRID = ((0.3, 0.5, 0.7), (0.1, 0.25, 0.5), (0.5, 0.75, 0.9), (0.3, 0.6, 0.85), (0.5, 0.7, 0.9))


def expected_decoy_length(
    channel: ChannelModel,
    source: DecoySource,
    pulses: int,
    *,
    eps_sec: float,
    eps_cor: float,
    f_ec: float = 1.1,
) -> Lim2014Result:
    """Lim 2014's length on the counts the emulator produces on average for ``pulses`` pulses."""
    if pulses <= 0:
        raise ConfigError("qubits", f"must be positive, got {pulses}")
    mus, ps = source.intensities, source.probabilities
    # After-pulses follow the previous gate, which is a pulse of any class: D0 of the mixed train.
    quiet = dataclasses.replace(channel, afterpulse=0.0)
    d0 = sum(
        p * float(predict_bb84(quiet, "wcp", mu).detection_probability) for mu, p in zip(mus, ps, strict=True)
    )
    gains, errors = [], []
    for mu in mus:
        pred = predict_bb84(channel, "wcp", mu, previous_click_probability=min(d0, 1.0))
        gains.append(float(pred.detection_probability))
        errors.append(float(pred.error_probability))
    # The click model is the same in both bases: the bases only split the pulses.
    in_x = [pulses * p * source.p_x**2 for p in ps]
    in_z = [pulses * p * (1.0 - source.p_x) ** 2 for p in ps]
    n_x = tuple(round(n * g) for n, g in zip(in_x, gains, strict=True))
    n_z = tuple(round(n * g) for n, g in zip(in_z, gains, strict=True))
    m_z = tuple(min(round(n * e), nz) for n, e, nz in zip(in_z, errors, n_z, strict=True))
    qber = sum(p * e for p, e in zip(ps, errors, strict=True)) / max(
        sum(p * g for p, g in zip(ps, gains, strict=True)), 1e-300
    )
    leak = f_ec * sum(n_x) * float(binary_entropy(qber))
    return lim2014_length(
        intensities=mus,
        probabilities=ps,
        n_x=n_x,
        n_z=n_z,
        m_z=m_z,
        leak_ec=leak,
        eps_sec=eps_sec,
        eps_cor=eps_cor,
    )


def _source(x: np.ndarray | tuple[float, ...]) -> DecoySource:
    mu1, ratio, p1, share, p_x = (float(v) for v in x)
    p2 = (1.0 - p1) * share
    return DecoySource(intensities=(mu1, mu1 * ratio, MU3), probabilities=(p1, p2, 1.0 - p1 - p2), p_x=p_x)


@functools.lru_cache(maxsize=256)
def optimise(
    channel: ChannelModel, pulses: int, eps_sec: float, eps_cor: float, f_ec: float = 1.1
) -> DecoySource:
    """The decoy source maximising :func:`expected_decoy_length` (deterministic, cached by arguments).

    A coarse grid picks the starting point, then bounded Powell refines it. When no setting gives a
    key (too long a fibre for the block), the grid point with the largest raw length is returned.
    """

    def objective(x: np.ndarray | tuple[float, ...]) -> float:
        raw = expected_decoy_length(
            channel, _source(x), pulses, eps_sec=eps_sec, eps_cor=eps_cor, f_ec=f_ec
        ).raw_length
        # No certified single photon: rank below every valid point, not equal to each other only.
        return -raw if math.isfinite(raw) else 1e30

    start = min(itertools.product(*_GRID), key=objective)
    best = minimize(
        objective, np.array(start), method="Powell", bounds=_BOUNDS, options={"xtol": 1e-3, "ftol": 1e-6}
    )
    x = best.x if best.fun <= objective(start) else np.array(start)
    return _source(tuple(round(float(v), 4) for v in x))
