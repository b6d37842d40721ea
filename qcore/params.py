"""The value types a distillation round is parameterised with: which protocol, which light source, and
the round's policy. Both ends of a link build the same ``DistillConfig``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from .constants import QBER_TOLERANCE
from .errors import ConfigError
from .security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC, check_eps, total_eps, verification_hash_bits


class ProtocolKind(StrEnum):
    BB84 = "bb84"
    E91 = "e91"


class E91Security(StrEnum):
    """How an E91 round turns its counts into a key length (docs/references.md §2)."""

    BBM92 = "bbm92"
    """What deployed entanglement-based links do: two conjugate key bases, the Tomamichel 2012 finite-key
    length on the key-basis counts, CHSH as the entanglement witness (abort when its lower bound <= 2)."""
    DEVICE_INDEPENDENT = "device-independent"
    """The Acin 2007 rate with error correction counted once, n (1 - chi(S_low)) - leak. Assumes fair
    sampling: S is measured on the coincidences of lossy detectors."""


class SourceKind(StrEnum):
    SINGLE_PHOTON = "single-photon"
    WCP = "wcp"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoySource:
    """A weak-coherent-pulse source with signal, weak decoy and vacuum-like intensities (Lim 2014)."""

    intensities: tuple[float, float, float] = (0.5, 0.1, 2e-4)
    """Mean photon numbers mu_1 > mu_2 + mu_3, mu_2 > mu_3 >= 0: signal, weak decoy, vacuum decoy."""
    probabilities: tuple[float, float, float] = (0.7, 0.2, 0.1)
    """Probability of each intensity per pulse; they sum to one."""
    p_x: float = 0.5
    """Probability that Alice, and Bob, choose basis 0 (X), the key basis; basis 1 (Z) only estimates the
    phase error (Lim 2014's biased basis choice: long blocks key on p_X^2 of the pulses)."""

    def __post_init__(self) -> None:
        mu1, mu2, mu3 = self.intensities
        if not (mu1 > mu2 + mu3 and mu2 > mu3 >= 0.0):
            raise ConfigError(
                "mu", f"decoy intensities need mu1 > mu2 + mu3 and mu2 > mu3 >= 0, got {self.intensities}"
            )
        if mu1 > 10:
            raise ConfigError("mu", f"signal intensity {mu1} is not a weak pulse")
        if any(p <= 0 for p in self.probabilities) or not math.isclose(sum(self.probabilities), 1.0):
            raise ConfigError("decoy_probabilities", "must be positive and sum to 1")
        if not 0.0 < self.p_x < 1.0:
            raise ConfigError("p_x", f"the key-basis probability must be in (0, 1), got {self.p_x}")


class CascadeKind(StrEnum):
    """Which Cascade schedule a round reconciles with (``cascade_schedule``); both ends must agree."""

    LOW_LATENCY = "low-latency"
    FEW_ROUND_TRIPS = "few-round-trips"


@dataclass(frozen=True, slots=True, kw_only=True)
class DistillConfig:
    """Policy for one distillation round; both ends must use the same."""

    protocol: ProtocolKind = ProtocolKind.BB84
    """BB84 or E91."""
    decoy: DecoySource | None = None
    """Decoy intensities for a weak-coherent-pulse BB84 source; None for a single-photon source."""
    sample_fraction: float = 0.3
    """Share of the key candidates disclosed to estimate the QBER (BB84 single-photon, E91)."""
    qber_tolerance: float = QBER_TOLERANCE
    """Abort when the observed test-bit QBER exceeds this (Shor-Preskill's zero is near 11 %). The
    finite-size deviation does not enter the abort: it shortens the key (Tomamichel et al. 2012)."""
    eps_sec: float = DEFAULT_EPS_SEC
    """Secrecy parameter of the finite-key bound, in (0, 1); the deployer's choice."""
    eps_cor: float = DEFAULT_EPS_COR
    """Correctness parameter, in (0, 1): fixes the verification hash length, ceil(log2(1/eps_cor)) bits."""
    ec_efficiency_estimate: float = 1.1
    """Reconciliation inefficiency assumed before Cascade runs, to abort early on hopeless rounds."""
    e91_security: E91Security = E91Security.BBM92
    """E91 key-length analysis: BBM92 finite key (default) or the device-independent rate."""
    cascade: CascadeKind = CascadeKind.LOW_LATENCY
    """Cascade's block schedule: ``low-latency`` or ``few-round-trips`` (fewer round trips for a little
    more leak: what a link over a WAN wants)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_fraction < 1.0:
            raise ConfigError("sample_fraction", f"must be in (0, 1), got {self.sample_fraction}")
        if not 0.0 < self.qber_tolerance < 0.5:
            raise ConfigError("qber_tolerance", f"must be in (0, 0.5), got {self.qber_tolerance}")
        check_eps("eps_sec", self.eps_sec)
        check_eps("eps_cor", self.eps_cor)
        if self.decoy is not None and self.protocol is not ProtocolKind.BB84:
            raise ConfigError("decoy", "decoy states apply to BB84 only")

    @property
    def verification_bits(self) -> int:
        """Size of the verification hash; the finite-key lengths charge exactly this many bits."""
        return verification_hash_bits(self.eps_cor)

    @property
    def eps(self) -> float:
        """The total security parameter eps_sec + eps_cor of a round (composable security)."""
        return total_eps(self.eps_sec, self.eps_cor)
