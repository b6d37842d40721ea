"""The true single-photon bound: the most secret key a decoy BB84 round may hold on an attacked channel.

Under photon-number splitting Eve holds a copy of every multi-photon pulse she split, so secret key can
only come from the detections of single-photon pulses (their errors paid in phase-error entropy) and of
pulses that carried no photon (dark counts; Lim 2014's s_X0). This module computes, from the channel
model and the attack (not from anything the parties observe), the fraction of detections of each kind
and the single-photon error rate, and so the asymptotic length

    l_true = n_X (f_0 + f_1 (1 - h(e_1))) - leak_EC

with no finite-size term: it is an upper bound on any secure length, which the decoy estimate (a lower
bound on s_X1, an upper bound on phi_X) must never exceed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .channel import Eavesdropper, EveKind, _pns_single_photon_block
from .channel_events import _PNS_BLOCKED, _PNS_SINGLE, _PNS_ZERO, _photon_tables
from .channel_model import ChannelModel
from .errors import ConfigError
from .params import DecoySource
from .theory import binary_entropy


@dataclass(frozen=True, slots=True, kw_only=True)
class TrueSinglePhoton:
    """Per-detection shares and the single-photon error on the attacked channel (expected values)."""

    vacuum_share: float
    """Share of Bob's detections from pulses with no photon reaching Eve's or the fibre's output."""
    single_share: float
    """Share of Bob's detections from single-photon pulses Eve did not split (she cannot split one)."""
    single_error: float
    """Error rate of those single-photon detections (matching bases)."""

    def length(self, key_bits: int, leak_ec: float) -> float:
        """Asymptotic secret length of `key_bits` key-basis detections after `leak_ec` bits leaked."""
        if key_bits < 0 or leak_ec < 0:
            raise ConfigError("key_bits", "key bits and leak must be non-negative")
        per_bit = self.vacuum_share + self.single_share * (1.0 - float(binary_entropy(self.single_error)))
        return key_bits * per_bit - leak_ec


def _single_error(t: float, e_mis: float, dark: float) -> float:
    """Error rate of a click from one photon seen with transmittance `t`: only the wrong detector fires,
    or both fire (a random bit, half wrong), given at least one fired."""
    right, wrong, lost = t * (1.0 - e_mis), t * e_mis, 1.0 - t
    q = 1.0 - dark
    p_err = (
        right * (0.5 * dark)  # the right detector fired; the wrong one too by dark count: half wrong
        + wrong * (q + 0.5 * dark)  # the wrong one fired; alone (wrong) or with a dark count on the right
        + lost * (dark * q + 0.5 * dark * dark)  # dark counts only
    )
    p_click = right + wrong + lost * (1.0 - q * q)
    return p_err / p_click if p_click > 0 else 0.5


def true_single_photon(model: ChannelModel, decoy: DecoySource, eve: Eavesdropper) -> TrueSinglePhoton:
    """The expected shares of vacuum and single-photon detections, over all decoy classes, on `model`
    attacked by `eve` (no attack, intercept-resend or PNS), and the single-photon error."""
    if eve.active and eve.kind is EveKind.INTERCEPT_RESEND:
        raise ConfigError("eve", "the single-photon bound is defined here for PNS or no attack")
    weight, _, click = _photon_tables(model, decoy, eve)
    dark = model.dark_count
    pns = eve.active and eve.kind is EveKind.PNS
    total = float((weight * click).sum())
    vacuum = 0.0
    single = 0.0
    error_weight = 0.0
    eta = model.transmittance
    vacuum_click = 1.0 - (1.0 - dark) ** 2
    t_pns = 0.0
    if pns:
        _, line = _pns_single_photon_block(model, decoy.intensities[0], model.detector_efficiency)
        t_pns = line * model.detector_efficiency
    for k, mu in enumerate(decoy.intensities):
        # Not attacked: Poisson photon numbers through the honest fibre.
        honest_w = float(weight[k, 0])
        p0, p1 = math.exp(-mu), mu * math.exp(-mu)
        vacuum += honest_w * p0 * vacuum_click
        y1 = 1.0 - (1.0 - eta) * (1.0 - dark) ** 2
        single += honest_w * p1 * y1
        error_weight += honest_w * p1 * y1 * _single_error(eta, model.misalignment, dark)
        if pns:
            vacuum += float(weight[k, _PNS_ZERO] + weight[k, _PNS_BLOCKED]) * vacuum_click
            w1 = float(weight[k, _PNS_SINGLE] * click[k, _PNS_SINGLE])
            single += w1
            error_weight += w1 * _single_error(t_pns, model.misalignment, dark)
    # After-pulses add detections that carry neither a photon nor a vacuum certificate.
    total *= 1.0 + model.afterpulse * (1.0 - total)
    return TrueSinglePhoton(
        vacuum_share=vacuum / total,
        single_share=single / total,
        single_error=error_weight / single if single > 0 else 0.5,
    )
