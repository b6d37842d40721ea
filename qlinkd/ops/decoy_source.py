"""The decoy source and round size of a ``bb84-decoy`` link, fixed when the configuration loads.

The daemon cannot see the fibre (the channel service holds its model), so the deployer states the length
they measured (``fibre_km``) and the source is what ``qcore.decoy_optimiser`` picks for that fibre with
the standard detector set (docs/references.md §1), the round size and the link's security parameters.
Explicit values (``mu``, ``decoy_mu2``, ``decoy_probabilities``, ``p_x``) win over the optimiser, as
`qlink sim`'s flags do. The choice is deterministic, so two ends with the same ``[[peer]]`` values
compute the same source; the hello compares them and refuses a difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.params import DecoySource
from qlinkmed.qlinkd.errors import ConfigError

PULSES_LADDER = (10_000_000, 20_000_000, 50_000_000, 100_000_000, 200_000_000)
"""Round sizes tried, smallest first, when a bb84-decoy peer names no ``pulses_per_round``."""
NO_FIBRE_PULSES = 100_000_000
"""The default round size of a source given in full without a fibre length."""
MIN_EXPECTED_KEY_BITS = 10_000
"""The default round size is the smallest of the ladder whose expected key reaches this: a round must
pay for its authentication tags and leave key worth the pulses (below ~1e4 bits the Hoeffding terms
eat most of the block)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoyOverrides:
    """The source values a deployer gave explicitly; None where the optimiser chooses."""

    mu: float | None = None
    """Signal intensity mu_1."""
    mu2: float | None = None
    """Weak decoy intensity mu_2."""
    probabilities: tuple[float, float, float] | None = None
    """Probabilities of the signal, weak decoy and vacuum-like classes."""
    p_x: float | None = None
    """Probability of the key basis X, for Alice and Bob."""

    @property
    def complete(self) -> bool:
        """Every value given: no optimiser (and no fibre) needed."""
        return None not in (self.mu, self.mu2, self.probabilities, self.p_x)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoyPlan:
    source: DecoySource
    """The source both ends use for every round."""
    pulses_per_round: int
    """Pulses per round (the deployer's, or the ladder's choice)."""
    expected_key_bits: int | None
    """Lim 2014 length on the emulator's expected counts at ``fibre_km``; None without a fibre."""
    optimised: bool
    """At least one source value came from the optimiser."""

    def summary(self) -> str:
        mus = ", ".join(f"{v:g}" for v in self.source.intensities)
        ps = ", ".join(f"{v:.4f}" for v in self.source.probabilities)
        expected = "unknown (no fibre_km)" if self.expected_key_bits is None else f"{self.expected_key_bits}"
        how = "optimised" if self.optimised else "as configured"
        return (
            f"decoy source ({how}): intensities [{mus}], probabilities [{ps}], p_x {self.source.p_x:g}; "
            f"{self.pulses_per_round} pulses per round, expected key {expected} bits per round"
        )


def _source(
    overrides: DecoyOverrides, channel: ChannelModel | None, pulses: int, eps_sec: float, eps_cor: float
) -> DecoySource:
    # scipy comes with the optimiser: imported only for the links that need it.
    from qlinkmed.qcore.decoy_optimiser import MU3, optimise

    # Without a channel every value is given (plan_decoy checks): the default source is never used.
    base = DecoySource() if channel is None else optimise(channel, pulses, eps_sec, eps_cor)
    return DecoySource(
        intensities=(
            base.intensities[0] if overrides.mu is None else overrides.mu,
            base.intensities[1] if overrides.mu2 is None else overrides.mu2,
            MU3,
        ),
        probabilities=base.probabilities if overrides.probabilities is None else overrides.probabilities,
        p_x=base.p_x if overrides.p_x is None else overrides.p_x,
    )


def _expected(channel: ChannelModel, source: DecoySource, pulses: int, eps_sec: float, eps_cor: float) -> int:
    from qlinkmed.qcore.decoy_optimiser import expected_decoy_length

    return expected_decoy_length(channel, source, pulses, eps_sec=eps_sec, eps_cor=eps_cor).length


def plan_decoy(
    *,
    fibre_km: float | None,
    pulses_per_round: int | None,
    overrides: DecoyOverrides,
    eps_sec: float,
    eps_cor: float,
) -> DecoyPlan:
    """The source and round size of a bb84-decoy link. Raises ConfigError naming the field: a missing
    fibre, a source outside the decoy constraints, or a round whose expected key at the fibre is zero
    (with the round size it would need)."""
    if fibre_km is not None and not (math.isfinite(fibre_km) and 0.0 <= fibre_km <= 500.0):
        raise ConfigError("fibre_km", f"must be a length in km in [0, 500], got {fibre_km}")
    if fibre_km is None and not overrides.complete:
        raise ConfigError(
            "fibre_km",
            "required for protocol bb84-decoy (the optimiser chooses the source for the fibre) unless "
            "mu, decoy_mu2, decoy_probabilities and p_x are all given",
        )
    if pulses_per_round is not None and not 10_000 <= pulses_per_round <= PULSES_LADDER[-1]:
        raise ConfigError("pulses_per_round", "must be in 1e4..2e8")
    if fibre_km is None:
        # No fibre, so nothing to size the round by: 1e8 keys at 50 km with the standard detectors.
        pulses = pulses_per_round if pulses_per_round is not None else NO_FIBRE_PULSES
        source = _source(overrides, None, pulses, eps_sec, eps_cor)
        return DecoyPlan(source=source, pulses_per_round=pulses, expected_key_bits=None, optimised=False)

    channel = ChannelModel(distance_km=fibre_km)

    def at(pulses: int) -> tuple[DecoySource, int]:
        source = _source(overrides, channel, pulses, eps_sec, eps_cor)
        return source, _expected(channel, source, pulses, eps_sec, eps_cor)

    optimised = not overrides.complete
    if pulses_per_round is not None:
        source, expected = at(pulses_per_round)
        if expected <= 0:
            raise ConfigError(
                "pulses_per_round",
                f"{pulses_per_round} pulses per round over fibre_km = {fibre_km:g} are expected to give no "
                f"key (Lim 2014 bound on the expected counts); {_needed(at, fibre_km)}",
            )
        return DecoyPlan(
            source=source, pulses_per_round=pulses_per_round, expected_key_bits=expected, optimised=optimised
        )
    tried = [(pulses, *at(pulses)) for pulses in PULSES_LADDER]
    for pulses, source, expected in tried:
        if expected >= MIN_EXPECTED_KEY_BITS:
            return DecoyPlan(
                source=source, pulses_per_round=pulses, expected_key_bits=expected, optimised=optimised
            )
    keyed = [t for t in tried if t[2] > 0]
    if keyed:
        pulses, source, expected = keyed[-1]
        return DecoyPlan(
            source=source, pulses_per_round=pulses, expected_key_bits=expected, optimised=optimised
        )
    raise ConfigError(
        "fibre_km",
        f"fibre_km = {fibre_km:g} gives no key even at pulses_per_round = {PULSES_LADDER[-1]} (the largest "
        "round the daemons carry): shorten the link or add a trusted node",
    )


def _needed(at: Callable[[int], tuple[DecoySource, int]], fibre_km: float) -> str:
    """Which ladder round size would key at the fibre, for the refusal message."""
    for pulses in PULSES_LADDER:
        if at(pulses)[1] > 0:
            return f"the smallest block that keys there is pulses_per_round = {pulses}"
    return f"no block up to {PULSES_LADDER[-1]} pulses keys at {fibre_km:g} km"
