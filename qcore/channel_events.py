"""Event-driven BB84 channel: the same physics as ``channel.emulate_bb84``, drawn only for the pulses that
make a click, so the cost and memory follow the detections, not the pulses sent.

Why it is exact. Pulses are independent and identically distributed, so per chunk of pulses:
- the number of pulses whose gate clicks from signal or dark count is binomial with the mean click
  probability; each such pulse's decoy class and Eve's action on it follow their distribution given a
  click (Bayes on the per-class, per-action click probability below);
- Alice's bit and basis and Bob's basis do not change the click probability (both detectors' dark counts
  are equal and a lost photon carries no bit), so for clicked pulses they stay uniform and independent:
  they come from the parties' secret sources, as in the daemon, for the clicked pulses only;
- which detector(s) fired is then drawn from its exact probability given everything above;
- the positions of the clicked gates are a uniform subset of the chunk; an after-pulse lands in the gate
  after a click (as in the per-pulse path), either on a clicked gate (both may then fire) or on a gate that
  saw nothing, whose pulse's class follows its distribution given no click.
The click probabilities use the generating function G(x) = E[(1 - x)^N] of the photon number N that
reaches Bob's detectors: no photon gives outcome b with probability G(t p_b), where t is the line-and-
detector transmittance and p_b the probability that one photon gives b (misalignment as the backend's
Pauli-Y flip: same basis gives the prepared bit flipped with probability e_mis, the other basis a fair
coin). Dark counts fire each detector independently.

The per-pulse path stays the reference (and the one the qiskit backend uses); tests compare the two.
"""

from __future__ import annotations

import math

import numpy as np

from .channel import (
    ChannelStats,
    DetectorClicks,
    Eavesdropper,
    EveKind,
    PreparedPulses,
    _pns_single_photon_block,
    _wcp_decoy,
    choose_bb84_bases,
)
from .channel_model import ChannelModel
from .errors import ConfigError
from .params import DecoySource, SourceKind
from .randomness import RandomSource
from .rng import random_bits

_EMPTY = np.zeros(0, dtype=np.uint8)
DEFAULT_CHUNK = 10_000_000
"""Pulses handled per step: bounds the memory of one step (a few bytes per detection in it)."""

# Eve's action on one pulse, as the per-pulse path draws it.
_NONE = 0  # not attacked (or, intercept-resend, no photon to measure)
_IR = 1  # intercept-resend on a pulse with at least one photon
_IR_EMPTY = 2  # intercept-resend on an empty pulse: nothing to measure, nothing reaches Bob
_PNS_ZERO, _PNS_MULTI, _PNS_SINGLE, _PNS_BLOCKED = 1, 2, 3, 4  # PNS on 0, >= 2, 1 (passed), 1 (blocked)

# Columns of the G table: one photon's outcome probability e_mis, 1 - e_mis, 1/2, and 1 (no photon at all).
_P_ERR, _P_OK, _P_HALF, _P_ANY = 0, 1, 2, 3


def _photon_tables(
    model: ChannelModel, wcp: DecoySource | None, eve: Eavesdropper
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (class, Eve action): prior weight P(class) P(action | class), the G table at the four photon
    outcome probabilities, and the click probability (signal or dark count on either detector)."""
    eta = model.transmittance
    e = model.misalignment
    shares = np.array([e, 1.0 - e, 0.5, 1.0])
    mus = [1.0] if wcp is None else list(wcp.intensities)
    priors = [1.0] if wcp is None else list(wcp.probabilities)
    f = eve.fraction if eve.active else 0.0
    actions = 5 if eve.kind is EveKind.PNS and eve.active else 3 if eve.active else 1
    weight = np.zeros((len(mus), actions))
    g = np.ones((len(mus), actions, 4))
    if eve.kind is EveKind.PNS and eve.active and wcp is not None:
        block, line = _pns_single_photon_block(model, wcp.intensities[0], model.detector_efficiency)
        t_eve = line * model.detector_efficiency
    for k, (mu, prior) in enumerate(zip(mus, priors, strict=True)):
        honest = 1.0 - eta * shares if wcp is None else np.exp(-mu * eta * shares)
        if actions == 1:
            weight[k] = [prior]
            g[k, 0] = honest
        elif actions == 3:
            hit = 1.0 if wcp is None else -math.expm1(-mu)
            weight[k] = [prior * (1.0 - f), prior * f * hit, prior * f * (1.0 - hit)]
            g[k, 0] = honest
            if wcp is None:
                g[k, 1] = honest
            else:
                # Photon number given at least one: E[(1-x)^N | N >= 1] for Poisson N.
                g[k, 1] = np.exp(-mu * eta * shares) * np.expm1(-mu * (1.0 - eta * shares)) / math.expm1(-mu)
        else:
            p0 = math.exp(-mu)
            p1 = mu * p0
            p2 = max(0.0, 1.0 - p0 - p1)
            weight[k] = [
                prior * (1 - f),
                prior * f * p0,
                prior * f * p2,
                prior * f * p1 * (1 - block),
                prior * f * p1 * block,
            ]
            g[k, _NONE] = honest
            x = t_eve * shares
            u = 1.0 - x
            with np.errstate(divide="ignore", invalid="ignore"):
                # E[(1-x)^(N-1) | N >= 2]: Eve keeps one photon of a multi-photon pulse.
                multi = np.where(u > 0, ((np.exp(-mu * x) - p0) / u - p1) / p2 if p2 > 0 else 1.0, 0.0)
            g[k, _PNS_MULTI] = np.clip(multi, 0.0, 1.0)
            g[k, _PNS_SINGLE] = 1.0 - x
    click = 1.0 - g[:, :, _P_ANY] * (1.0 - model.dark_count) ** 2
    return weight, g, click


def _normalised(p: np.ndarray) -> np.ndarray:
    total = float(p.sum())
    return p / total if total > 0 else np.full(p.shape, 1.0 / p.size)


def emulate_bb84_events(
    n: int,
    *,
    model: ChannelModel,
    source: SourceKind,
    decoy: DecoySource | None,
    eve: Eavesdropper,
    rng: np.random.Generator,
    alice: RandomSource,
    bob: RandomSource,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[PreparedPulses, DetectorClicks, ChannelStats]:
    """Send `n` BB84 pulses; return the records of the detected pulses only, in the order sent.

    Alice's record (bits, bases, classes) and Bob's (bases, bits; ``detected`` all true) cover the same
    detections, the pulses Bob's detectors registered: the per-pulse path's records with the undetected
    pulses left out, which sifting never reads. Alice's and Bob's choices come from their secret
    sources `alice` and `bob`; the channel's randomness from `rng`.
    """
    if n <= 0:
        raise ConfigError("qubits", f"must be positive, got {n}")
    if chunk <= 0:
        raise ConfigError("chunk", f"must be positive, got {chunk}")
    wcp = _wcp_decoy(source, decoy)
    if eve.kind is EveKind.PNS and wcp is None:
        raise ConfigError("eve", "photon-number splitting needs multi-photon pulses (--source wcp)")
    weight, g, click = _photon_tables(model, wcp, eve)
    attack = eve.kind if eve.active else EveKind.NONE
    joint_click = weight * click
    p_click = float(joint_click.sum())
    class_if_click = _normalised(joint_click.sum(axis=1))
    class_if_quiet = _normalised((weight * (1.0 - click)).sum(axis=1))
    action_if_click = np.cumsum(
        joint_click / np.maximum(joint_click.sum(axis=1, keepdims=True), 1e-300), axis=1
    )
    action_if_quiet = _normalised((weight * (1.0 - click)).sum(axis=0))
    pdc = model.dark_count

    parts: list[tuple[np.ndarray, ...]] = []
    attacked = known = 0
    carry = False  # an after-pulse due in the first gate of the next chunk
    start = 0
    while start < n:
        m = min(chunk, n - start)
        last_chunk = start + m >= n
        d = int(rng.binomial(m, p_click))
        pos = np.sort(rng.choice(m, size=d, replace=False)) if d else np.zeros(0, dtype=np.int64)
        k = alice.choice(class_if_click.tolist(), d) if wcp is not None else np.zeros(d, dtype=np.uint8)
        a_bits = alice.bits(d)
        a_bases = choose_bb84_bases(d, secret=alice, decoy=wcp)
        b_bases = choose_bb84_bases(d, secret=bob, decoy=wcp)
        u = rng.random(d)
        action = (u[:, None] >= action_if_click[k][:, :-1]).sum(axis=1)
        state_bits = a_bits.copy()
        state_bases = a_bases.copy()
        if attack is EveKind.INTERCEPT_RESEND:
            hit = np.flatnonzero(action == _IR)
            eve_bases = random_bits(rng, hit.size)
            right = eve_bases == a_bases[hit]
            state_bits[hit] = np.where(right, a_bits[hit], random_bits(rng, hit.size))
            state_bases[hit] = eve_bases
            attacked += hit.size
            known += int(np.count_nonzero(right))
        elif attack is EveKind.PNS:
            attacked += int(np.count_nonzero(action >= _PNS_MULTI))
            known += int(np.count_nonzero(action == _PNS_MULTI))
        same = state_bases == b_bases
        one_ok = same & (state_bits == 1)
        zero_ok = same & (state_bits == 0)
        col1 = np.where(one_ok, _P_OK, np.where(zero_ok, _P_ERR, _P_HALF))  # share giving outcome 1
        col0 = np.where(one_ok, _P_ERR, np.where(zero_ok, _P_OK, _P_HALF))
        none0 = g[k, action, col1]  # no photon gave outcome 1 ...
        none1 = g[k, action, col0]
        nothing = g[k, action, _P_ANY]
        q = 1.0 - pdc
        p10 = (none0 - nothing + nothing * pdc) * q
        p01 = (none1 - nothing + nothing * pdc) * q
        p_any = 1.0 - nothing * q * q
        v = rng.random(d) * p_any
        fired0 = (v < p10) | (v >= p10 + p01)
        fired1 = v >= p10

        # After-pulses: each clicked gate, with probability p_ap, fires a random detector in the next gate.
        src = pos[rng.random(d) < model.afterpulse] if model.afterpulse > 0 else pos[:0]
        targets = src + 1
        next_carry = bool(targets.size and targets[-1] == m)
        targets = targets[targets < m]
        if carry:
            targets = np.concatenate(([0], targets))
        carry = next_carry and not last_chunk
        which = random_bits(rng, targets.size).astype(bool)
        at = np.searchsorted(pos, targets)
        on_click = (
            (at < d) & (pos[np.minimum(at, d - 1)] == targets) if d else np.zeros(targets.size, dtype=bool)
        )
        fired1[at[on_click & which]] = True
        fired0[at[on_click & ~which]] = True
        quiet = targets[~on_click]
        j = quiet.size
        k_q = alice.choice(class_if_quiet.tolist(), j) if wcp is not None else np.zeros(j, dtype=np.uint8)
        all_pos = np.concatenate((pos, quiet))
        order = np.argsort(all_pos, kind="stable")
        f0 = np.concatenate((fired0, ~which[~on_click]))[order]
        f1 = np.concatenate((fired1, which[~on_click]))[order]
        bob_bits = f1.astype(np.uint8)
        both = f0 & f1
        bob_bits[both] = random_bits(rng, int(np.count_nonzero(both)))
        parts.append(
            (
                np.concatenate((a_bits, alice.bits(j)))[order],
                np.concatenate((a_bases, choose_bb84_bases(j, secret=alice, decoy=wcp)))[order],
                np.concatenate((k, k_q))[order].astype(np.uint8),
                np.concatenate((b_bases, choose_bb84_bases(j, secret=bob, decoy=wcp)))[order],
                bob_bits,
            )
        )
        # Eve's actions on the pulses that made no click (reported, never seen by the parties).
        quiet_actions = rng.multinomial(m - d, action_if_quiet)
        if attack is EveKind.INTERCEPT_RESEND:
            attacked += int(quiet_actions[_IR])
            known += int(rng.binomial(int(quiet_actions[_IR]), 0.5))
        elif attack is EveKind.PNS:
            attacked += int(quiet_actions[_PNS_MULTI:].sum())
            known += int(quiet_actions[_PNS_MULTI])
        start += m

    # One field at a time, dropping each chunk's copy as it goes: the peak stays near one set of records.
    columns = []
    for i in range(5):
        columns.append(np.concatenate([p[i] for p in parts]))
        parts = [(*p[:i], _EMPTY, *p[i + 1 :]) for p in parts]
    a_bits_all, a_bases_all, k_all, b_bases_all, b_bits_all = columns
    return (
        PreparedPulses(
            bits=a_bits_all, bases=a_bases_all, intensity_class=k_all if wcp is not None else None
        ),
        # Every record is a detection: a read-only broadcast says so without a byte per detection.
        DetectorClicks(
            detected=np.broadcast_to(np.True_, (b_bits_all.size,)), bases=b_bases_all, bits=b_bits_all
        ),
        ChannelStats(pulses=n, eve_attacked=attacked, eve_known_bits=known),
    )
