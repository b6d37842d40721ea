"""Event-driven channels: the same physics as ``channel.emulate_bb84`` and ``channel.emulate_e91``, drawn
only for the pulses that make a click (BB84) or the gates where both sides click (E91, see
:func:`emulate_e91_events`), so the cost and memory follow the detections, not the pulses sent.

BB84 below.

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

from .backends import MeasurementBackend
from .channel import (
    ALICE_ANGLES8,
    BOB_ANGLES8,
    ChannelStats,
    DetectorClicks,
    Eavesdropper,
    EveKind,
    PreparedPulses,
    _pns_single_photon_block,
    _wcp_decoy,
    choose_bb84_bases,
    choose_e91_settings,
    e91_arm,
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


# ---------------------------------------------------------------------------------------------------------
# E91: only the coincidences.
#
# Per gate and side, a "primary" click is one from the side's photon or a dark count on either detector
# (probability c = 1 - (1 - eta)(1 - p_dc)^2, eta the arm's transmittance times the detector efficiency),
# independent between the sides and across gates; a primary click is followed, with probability p_ap, by
# an after-pulse in the next gate (``channel._add_noise_clicks``). A gate's own state is then one of the
# nine (A primary, B primary, A's after-pulse fires, B's fires) below; the states are i.i.d. across gates,
# and a side registers gate t when it has a primary click there or an after-pulse from gate t - 1.
# A coincidence at t therefore needs gate t to have both primaries, or gate t - 1 to fire an after-pulse.
# Gates in the states with either ("marked") are drawn like BB84's clicks (a binomial count, a uniform
# subset, the state from its distribution given marked); the gate after an after-pulse, when unmarked,
# gets its state from the distribution given unmarked. Settings, Eve's action and the pair's outcomes do
# not change whether a side clicks, so they are drawn for the coincidences only, as are which of a
# primary click's causes (photon, dark count on detector 0, on detector 1) occurred.
_E91_A = np.array([0, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
_E91_B = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=bool)
_E91_XA = np.array([0, 0, 1, 0, 0, 0, 1, 0, 1], dtype=bool)
_E91_XB = np.array([0, 0, 0, 0, 1, 0, 0, 1, 1], dtype=bool)
_E91_MARKED = (_E91_A & _E91_B) | _E91_XA | _E91_XB
_E91_UNMARKED = np.flatnonzero(~_E91_MARKED)  # (0, 0), A alone, B alone: no after-pulse fired


def _e91_gate_states(c: float, p_ap: float) -> np.ndarray:
    """Probability of each of the nine gate states (both sides alike: primary c, after-pulse p_ap)."""
    side = {(0, 0): 1.0 - c, (1, 0): c * (1.0 - p_ap), (1, 1): c * p_ap}  # (primary, after-pulse fires)
    return np.array(
        [
            side[(int(a), int(xa))] * side[(int(b), int(xb))]
            for a, b, xa, xb in zip(_E91_A, _E91_B, _E91_XA, _E91_XB, strict=True)
        ]
    )


def _primary_causes(eta: float, pdc: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Given a primary click, which of (photon, dark count on 0, dark count on 1) occurred: a 3-bit
    code (bit 0 photon, bit 1 dark on 0, bit 2 dark on 1), from the exact conditional distribution."""
    codes = np.arange(1, 8)
    p = np.array(
        [
            (eta if code & 1 else 1 - eta) * (pdc if code & 2 else 1 - pdc) * (pdc if code & 4 else 1 - pdc)
            for code in codes
        ]
    )
    bounds = np.cumsum(p / p.sum())
    bounds[-1] = 1.0
    return codes[np.searchsorted(bounds, rng.random(size), side="right")].astype(np.uint8)


def emulate_e91_events(
    n: int,
    *,
    model: ChannelModel,
    eve: Eavesdropper,
    backend: MeasurementBackend,
    rng: np.random.Generator,
    alice: RandomSource,
    bob: RandomSource,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[DetectorClicks, DetectorClicks, ChannelStats]:
    """Emit `n` entangled pairs (``channel.emulate_e91``'s physics); return the coincidences only.

    Both records cover the same gates, those where both sides registered a click (``detected`` all true),
    in the order emitted. A side's clicks without a partner are left out: they would be announced and
    then discarded by sifting, which keys and estimates CHSH on coincidences only, so the click lists
    the parties exchange are shorter than on the per-pair path while every coincidence statistic has
    the same distribution. Settings come from the parties' secret sources `alice` and `bob` (for the
    coincidences only); the channel's randomness (losses, dark counts, after-pulses, Eve) from `rng`.
    """
    if chunk <= 0:
        raise ConfigError("chunk", f"must be positive, got {chunk}")
    half = e91_arm(n, model, eve)
    eta = half.transmittance
    pdc = half.dark_count
    p_ap = half.afterpulse
    c = 1.0 - (1.0 - eta) * (1.0 - pdc) ** 2
    states = _e91_gate_states(c, p_ap)
    p_marked = float(states[_E91_MARKED].sum())
    marked_states = np.flatnonzero(_E91_MARKED)
    marked_bounds = np.cumsum(_normalised(states[marked_states]))
    marked_bounds[-1] = 1.0
    quiet_bounds = np.cumsum(_normalised(states[_E91_UNMARKED]))
    quiet_bounds[-1] = 1.0
    f = eve.fraction if eve.active else 0.0

    parts: list[tuple[np.ndarray, ...]] = []
    attacked = 0
    carry = (False, False)  # after-pulses (A, B) due in the first gate of the next chunk
    start = 0
    while start < n:
        m = min(chunk, n - start)
        last_chunk = start + m >= n
        d = int(rng.binomial(m, p_marked))
        pos = np.sort(rng.choice(m, size=d, replace=False)) if d else np.zeros(0, dtype=np.int64)
        state = marked_states[np.searchsorted(marked_bounds, rng.random(d), side="right")]
        fires = _E91_XA[state] | _E91_XB[state]
        targets = pos[fires] + 1
        next_carry = (
            (bool(_E91_XA[state[-1]]), bool(_E91_XB[state[-1]]))
            if d and pos[-1] == m - 1 and not last_chunk
            else (False, False)
        )
        targets = targets[targets < m]
        if any(carry):
            targets = np.concatenate(([0], targets))
        # Candidate gates: the marked ones and those after an after-pulse, each with its own primaries.
        gates = np.union1d(pos, targets)
        at = np.searchsorted(pos, gates)
        own = (at < d) & (pos[np.minimum(at, max(d - 1, 0))] == gates) if d else np.zeros(gates.size, bool)
        gate_state = np.empty(gates.size, dtype=np.int64)
        gate_state[own] = state[at[own]]
        n_quiet = int(np.count_nonzero(~own))
        gate_state[~own] = _E91_UNMARKED[np.searchsorted(quiet_bounds, rng.random(n_quiet), side="right")]
        # After-pulses arriving from the gate before (marked, or the previous chunk's last gate).
        prev = np.searchsorted(pos, gates - 1)
        prev_marked = (
            (prev < d) & (pos[np.minimum(prev, max(d - 1, 0))] == gates - 1)
            if d
            else np.zeros(gates.size, bool)
        )
        in_a = np.zeros(gates.size, dtype=bool)
        in_b = np.zeros(gates.size, dtype=bool)
        in_a[prev_marked] = _E91_XA[state[prev[prev_marked]]]
        in_b[prev_marked] = _E91_XB[state[prev[prev_marked]]]
        if gates.size and gates[0] == 0:
            in_a[0] |= carry[0]
            in_b[0] |= carry[1]
        prim_a = _E91_A[gate_state]
        prim_b = _E91_B[gate_state]
        coincident = (prim_a | in_a) & (prim_b | in_b)
        prim_a, prim_b, in_a, in_b = (
            prim_a[coincident],
            prim_b[coincident],
            in_a[coincident],
            in_b[coincident],
        )
        k = int(np.count_nonzero(coincident))

        a_set = choose_e91_settings(k, secret=alice, bob=False)
        b_set = choose_e91_settings(k, secret=bob, bob=True)
        hit = rng.random(k) < f if f > 0 else np.zeros(k, dtype=bool)
        eve_angle = np.where(hit, 2 * random_bits(rng, k).astype(np.int64), -1)
        attacked += int(np.count_nonzero(hit)) + (int(rng.binomial(m - k, f)) if f > 0 else 0)
        a_out, b_out, _ = backend.measure_pairs(
            ALICE_ANGLES8[a_set], BOB_ANGLES8[b_set], eve_angle, half.misalignment, half.misalignment, rng
        )
        records = []
        for prim, incoming, out in ((prim_a, in_a, a_out), (prim_b, in_b, b_out)):
            cause = np.zeros(k, dtype=np.uint8)
            primaries = int(np.count_nonzero(prim))
            if primaries:  # none at all where no photon and no dark count can arrive (c = 0)
                cause[prim] = _primary_causes(eta, pdc, primaries, rng)
            photon = (cause & 1).astype(bool)
            which = random_bits(rng, k).astype(bool)  # the after-pulse's detector, where there is one
            fired0 = (photon & (out == 0)) | ((cause & 2) > 0) | (incoming & ~which)
            fired1 = (photon & (out == 1)) | ((cause & 4) > 0) | (incoming & which)
            bits = fired1.astype(np.uint8)
            both = fired0 & fired1
            bits[both] = random_bits(rng, int(np.count_nonzero(both)))
            records.append(bits)
        parts.append((records[0], a_set, records[1], b_set))
        carry = next_carry
        start += m

    columns = []
    for i in range(4):
        columns.append(np.concatenate([p[i] for p in parts]))
        parts = [(*p[:i], _EMPTY, *p[i + 1 :]) for p in parts]
    a_bits, a_settings, b_bits, b_settings = columns
    everywhere = np.broadcast_to(np.True_, (a_bits.size,))
    return (
        DetectorClicks(detected=everywhere, bases=a_settings, bits=a_bits),
        DetectorClicks(detected=everywhere, bases=b_settings, bits=b_bits),
        ChannelStats(pulses=n, eve_attacked=attacked),
    )
