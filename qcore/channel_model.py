"""The emulator's fibre-and-detector model and exact predictions of what it produces.

:class:`ChannelModel` is the channel the emulator (:mod:`qlinkmed.qcore.channel`) simulates;
:func:`predict_bb84` and :func:`predict_e91` give its gain, QBER and CHSH value exactly;
:func:`lim2014_error_model` is Lim et al.'s model, for cross-reference; :func:`secret_key_rate_curves`
feeds the predictions to the asymptotic rates of :mod:`qlinkmed.qcore.theory`, for plots. Functions
accept floats or numpy arrays and return a float for scalar input, an array otherwise. Sources are in
docs/references.md §1-2 and are cited per function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .constants import TSIRELSON_BOUND
from .errors import ConfigError
from .theory import DecoyRate, FloatOrArray, binary_entropy, float_or_array, gllp_decoy_rate

__all__ = [
    "BB84Prediction",
    "ChannelModel",
    "E91Prediction",
    "KeyRateCurves",
    "Lim2014Expectation",
    "Source",
    "lim2014_error_model",
    "predict_bb84",
    "predict_e91",
    "secret_key_rate_curves",
]

Source = Literal["single-photon", "wcp"]


# --------------------------------------------------------------------------- channel model


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelModel:
    """Fibre channel and threshold detectors as the emulator simulates them (docs/references.md §1).

    Defaults are the standard set of Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), §IV.
    """

    distance_km: float
    """Fibre length in km: Alice to Bob for BB84; detector to detector for E91 (source in the middle)."""
    attenuation_db_per_km: float = 0.2
    """Fibre loss in dB/km; channel transmittance 10^(-attenuation * distance / 10)."""
    detector_efficiency: float = 0.10
    """Bob's detection efficiency eta_Bob, in (0, 1] (each E91 side uses the same value)."""
    dark_count: float = 6e-7
    """Dark-count probability per detector per gate, p_dc, in [0, 1)."""
    afterpulse: float = 4e-2
    """After-pulse probability p_ap given that the previous gate clicked, in [0, 1]."""
    misalignment: float = 5e-3
    """Optical error e_mis: probability that a photon reaches the wrong detector, in [0, 1/2]."""

    def __post_init__(self) -> None:
        _require(self.distance_km >= 0.0 and math.isfinite(self.distance_km), "distance_km", ">= 0")
        _require(
            self.attenuation_db_per_km >= 0.0 and math.isfinite(self.attenuation_db_per_km),
            "attenuation_db_per_km",
            ">= 0",
        )
        _require(0.0 < self.detector_efficiency <= 1.0, "detector_efficiency", "in (0, 1]")
        _require(0.0 <= self.dark_count < 1.0, "dark_count", "in [0, 1)")
        _require(0.0 <= self.afterpulse <= 1.0, "afterpulse", "in [0, 1]")
        _require(0.0 <= self.misalignment <= 0.5, "misalignment", "in [0, 0.5]")

    @property
    def channel_transmittance(self) -> float:
        """Fibre transmittance eta_ch = 10^(-alpha L / 10) (Lim 2014, §IV)."""
        return float(10.0 ** (-self.attenuation_db_per_km * self.distance_km / 10.0))

    @property
    def transmittance(self) -> float:
        """System transmittance eta = eta_ch * eta_Bob: probability that one photon is detected."""
        return self.channel_transmittance * self.detector_efficiency


def _require(ok: bool, field: str, domain: str) -> None:
    if not ok:
        raise ConfigError(field, f"must be {domain}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BB84Prediction:
    """Exact per-pulse statistics of the click model in a matched basis."""

    detection_probability: FloatOrArray
    """Gain: probability that a pulse gives a detection (at least one detector fired)."""
    error_probability: FloatOrArray
    """Probability per pulse of a detection whose bit is wrong."""
    qber: FloatOrArray
    """error_probability / detection_probability (1/2 by convention when nothing can click)."""
    afterpulse_probability: FloatOrArray
    """a = p_ap D0: probability that an after-pulse fires in a gate."""


def _click_statistics(
    eta: np.ndarray,
    *,
    source: Source,
    mu: float,
    p_dc: float,
    p_ap: float,
    e_mis: float,
    previous_click: FloatOrArray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection and error probability per pulse, enumerating the independent contributions.

    Per gate there are three independent sources of clicks:
    - the signal, as a pair of events (C, W) on the correct and the wrong detector;
    - a dark count on each detector, independently with probability p_dc;
    - an after-pulse with probability a = p_ap D0, firing one detector chosen uniformly at random.
    Given the signal event and the after-pulse event, the two detectors fire independently (only the
    dark counts remain random), so the joint law of (correct fired, wrong fired) is a finite sum.
    """
    if source == "single-photon":
        # One photon: detected with probability eta, then exclusively on C (1 - e) or W (e).
        p_c, p_w = eta * (1.0 - e_mis), eta * e_mis
        signal = {(1, 0): p_c, (0, 1): p_w, (1, 1): np.zeros_like(eta), (0, 0): 1.0 - eta}
    elif source == "wcp":
        # Poisson light: the photons reaching each detector are independent Poisson numbers.
        c = -np.expm1(-eta * mu * (1.0 - e_mis))
        w = -np.expm1(-eta * mu * e_mis)
        signal = {(1, 0): c * (1 - w), (0, 1): (1 - c) * w, (1, 1): c * w, (0, 0): (1 - c) * (1 - w)}
    else:
        raise ConfigError("source", f"must be 'single-photon' or 'wcp', got {source!r}")
    if previous_click is None:
        # Stationary train of identical pulses: D0 = this gate's own signal-or-dark click probability.
        d0 = 1.0 - signal[(0, 0)] * (1.0 - p_dc) ** 2
    else:
        d0 = np.asarray(previous_click, dtype=np.float64)
    a = p_ap * d0
    afterpulse = {(0, 0): 1.0 - a, (1, 0): a / 2.0, (0, 1): a / 2.0}
    only_correct = np.zeros_like(eta)
    only_wrong = np.zeros_like(eta)
    both = np.zeros_like(eta)
    for (sc, sw), p_signal in signal.items():
        for (ac, aw), p_after in afterpulse.items():
            weight = p_signal * p_after
            fire_c = 1.0 if (sc or ac) else p_dc
            fire_w = 1.0 if (sw or aw) else p_dc
            only_correct = only_correct + weight * fire_c * (1.0 - fire_w)
            only_wrong = only_wrong + weight * (1.0 - fire_c) * fire_w
            both = both + weight * fire_c * fire_w
    detection = only_correct + only_wrong + both
    # Exactly one detector: its bit. Both: a uniformly random bit, wrong half the time.
    error = only_wrong + both / 2.0
    return detection, error, np.broadcast_to(a, detection.shape)


def _qber(detection: np.ndarray, error: np.ndarray) -> np.ndarray:
    positive = detection > 0.0
    return np.where(positive, error / np.where(positive, detection, 1.0), 0.5)


def predict_bb84(
    model: ChannelModel,
    source: Source = "single-photon",
    mu: float = 1.0,
    *,
    previous_click_probability: float | None = None,
) -> BB84Prediction:
    """Exact gain and QBER (matched basis) of one pulse in the emulator's click model.

    The model (docs/references.md §1, as the emulator simulates it): a single photon reaches Bob's detectors
    with probability eta = ``model.transmittance`` and then goes to the correct detector with
    probability 1 - e_mis, to the wrong one with probability e_mis. A weak coherent pulse of mean
    photon number ``mu`` (``source='wcp'``; ``mu`` is ignored for single photons) splits into two
    independent Poisson beams: the correct detector sees a signal click with probability
    1 - exp(-eta mu (1 - e_mis)), the wrong one with 1 - exp(-eta mu e_mis). Each detector adds a dark
    count with probability p_dc. An after-pulse occurs with probability a = p_ap D0 and fires one
    detector chosen uniformly at random; D0 is the probability that the previous gate clicked from
    signal or dark count (after-pulses do not cause after-pulses). By default the previous gate is a
    pulse of the same kind; pass ``previous_click_probability`` for a mixed train (decoy states).
    Exactly one detector fired: its bit; both: a uniformly random bit; none: no detection.
    """
    if not mu >= 0.0:
        raise ConfigError("mu", f"mean photon number must be >= 0, got {mu}")
    if previous_click_probability is not None and not 0.0 <= previous_click_probability <= 1.0:
        raise ConfigError("previous_click_probability", "must be in [0, 1]")
    return _prediction(
        np.asarray(model.transmittance, dtype=np.float64), model, source, mu, previous_click_probability
    )


def _prediction(
    eta: np.ndarray, model: ChannelModel, source: Source, mu: float, previous_click: float | None
) -> BB84Prediction:
    """The click statistics at system transmittance(s) `eta`, with every other parameter from `model`."""
    detection, error, a = _click_statistics(
        eta,
        source=source,
        mu=mu,
        p_dc=model.dark_count,
        p_ap=model.afterpulse,
        e_mis=model.misalignment,
        previous_click=previous_click,
    )
    return BB84Prediction(
        detection_probability=float_or_array(detection),
        error_probability=float_or_array(error),
        qber=float_or_array(_qber(detection, error)),
        afterpulse_probability=float_or_array(a),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class E91Prediction:
    """Exact coincidence statistics of the entanglement-based link (see :func:`predict_e91`)."""

    arm_detection_probability: float
    """Probability that one side registers a detection in a gate."""
    arm_visibility: float
    """Correlation factor of one arm, v = 1 - 2 q_arm (q_arm: that arm's error rate among detections)."""
    coincidence_probability: float
    """Probability per emitted pair that both sides register a detection."""
    visibility: float
    """V = v_A v_B: every correlator <A B> is the ideal singlet value times V."""
    qber: float
    """Error rate of coincidences at matching (key) settings, (1 - V) / 2."""
    chsh: float
    """Expected CHSH value at the E91 settings, 2 sqrt(2) V."""


def predict_e91(model: ChannelModel, *, arm_flip: float | None = None) -> E91Prediction:
    """Exact coincidence probability, key QBER and CHSH value for E91 with the source in the middle.

    Model: an ideal source emits one maximally entangled photon pair per gate. Each photon travels
    ``model.distance_km / 2`` of fibre to its side's pair of detectors, which follow the same click
    model as :func:`predict_bb84` (single photon, dark counts, after-pulses with D0 from identical
    previous gates). Misalignment acts on each arm independently: the photon reaches the detector
    opposite to the one the ideal singlet statistics dictate with probability ``arm_flip`` (default
    ``model.misalignment``). Each arm therefore keeps the ideal outcome, flips it, or replaces it by
    an independent uniform bit (double clicks; dark or after-pulse clicks when the photon is lost),
    independently of the settings and of the other arm. Conditioned on a coincidence, every
    correlator is multiplied by v_A v_B with v = P(keep) - P(flip) = 1 - 2 q_arm, hence
    QBER = (1 - v_A v_B) / 2 at matching settings and S = 2 sqrt(2) v_A v_B
    (the depolarising relation S = 2 sqrt(2)(1 - 2Q) of docs/references.md §2 holds exactly).
    """
    flip = model.misalignment if arm_flip is None else arm_flip
    if not 0.0 <= flip <= 0.5:
        raise ConfigError("arm_flip", f"must be in [0, 0.5], got {flip}")
    eta_arm = 10.0 ** (-model.attenuation_db_per_km * model.distance_km / 2.0 / 10.0)
    detection, error, _ = _click_statistics(
        np.asarray(eta_arm * model.detector_efficiency, dtype=np.float64),
        source="single-photon",
        mu=1.0,
        p_dc=model.dark_count,
        p_ap=model.afterpulse,
        e_mis=flip,
        previous_click=None,
    )
    arm_q = float(_qber(detection, error))
    arm_v = 1.0 - 2.0 * arm_q
    visibility = arm_v * arm_v
    return E91Prediction(
        arm_detection_probability=float(detection),
        arm_visibility=arm_v,
        coincidence_probability=float(detection) ** 2,
        visibility=visibility,
        qber=(1.0 - visibility) / 2.0,
        chsh=TSIRELSON_BOUND * visibility,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Lim2014Expectation:
    """Lim 2014's expected detection and error rates for intensity k (cross-reference only)."""

    detection_rate: FloatOrArray
    """D_k = 1 - (1 - 2 p_dc) exp(-eta_sys k): detection rate without after-pulses."""
    detection_rate_with_afterpulses: FloatOrArray
    """R_k = D_k (1 + p_ap)."""
    error_probability: FloatOrArray
    """e_k = p_dc + e_mis (1 - exp(-eta k)) + p_ap D_k / 2: probability per pulse of a bit error."""
    qber: FloatOrArray
    """e_k / R_k (1/2 by convention when R_k = 0)."""


def lim2014_error_model(
    model: ChannelModel,
    k: FloatOrArray,
    *,
    misalignment_transmittance: Literal["channel", "system"] = "channel",
) -> Lim2014Expectation:
    """Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), §IV (dedicated fibre), literally.

    e_k = p_dc + e_mis [1 - exp(-eta_ch k)] + p_ap D_k / 2, D_k = 1 - (1 - 2 p_dc) exp(-eta_sys k),
    R_k = D_k (1 + p_ap), eta_sys = eta_ch eta_Bob. The paper (and docs/references.md §1) write eta_ch, not
    eta_sys, in the misalignment term; with eta_Bob = 10 % that makes the optical errors ten times more
    frequent than the detections they belong to would allow (QBER ~ e_mis / eta_Bob). The default
    reproduces the paper as printed; ``misalignment_transmittance='system'`` uses eta_sys, which is
    what :func:`predict_bb84` reduces to to first order. For cross-reference only: the emulator
    follows :func:`predict_bb84`.
    """
    if misalignment_transmittance not in ("channel", "system"):
        raise ConfigError("misalignment_transmittance", "must be 'channel' or 'system'")
    k_arr = np.asarray(k, dtype=np.float64)
    eta_ch = model.channel_transmittance
    eta_sys = model.transmittance
    eta_mis = eta_ch if misalignment_transmittance == "channel" else eta_sys
    d_k = 1.0 - (1.0 - 2.0 * model.dark_count) * np.exp(-eta_sys * k_arr)
    r_k = d_k * (1.0 + model.afterpulse)
    e_k = model.dark_count + model.misalignment * -np.expm1(-eta_mis * k_arr) + model.afterpulse * d_k / 2
    return Lim2014Expectation(
        detection_rate=float_or_array(d_k),
        detection_rate_with_afterpulses=float_or_array(r_k),
        error_probability=float_or_array(e_k),
        qber=float_or_array(_qber(r_k, e_k)),
    )


# --------------------------------------------------------------------------- curves for plots


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRateCurves:
    """Asymptotic key rates per pulse against distance (arrays aligned with ``distances_km``)."""

    distances_km: np.ndarray
    """Fibre lengths, km."""
    single_photon: BB84Prediction
    """Predicted gain and QBER of an ideal single-photon source."""
    single_photon_rate: np.ndarray
    """max(0, sifting * gain * [1 - h(Q) - f h(Q)]) per pulse."""
    signal: BB84Prediction
    """Predicted gain and QBER of the signal pulses (mean photon number mu)."""
    decoy: BB84Prediction
    """Predicted gain and QBER of the weak decoy (nu)."""
    vacuum: BB84Prediction
    """Predicted vacuum yield Y_0 (gain at mu = 0)."""
    decoy_bounds: DecoyRate
    """GLLP bounds from the predicted gains (raw rate, Y_1, e_1, Q_1)."""
    decoy_rate: np.ndarray
    """max(0, GLLP vacuum + weak decoy rate) per pulse."""


def secret_key_rate_curves(
    distances_km: np.ndarray,
    *,
    model: ChannelModel | None = None,
    f: float = 1.16,
    sifting: float = 0.5,
    mu: float = 0.5,
    nu: float = 0.1,
) -> KeyRateCurves:
    """Asymptotic key rate per pulse against distance, for plots.

    (a) Ideal single-photon BB84 with real error correction: ``sifting * gain * [1 - h(Q) - f h(Q)]``
        (Elkouss et al. rate; ``sifting`` = 1/2 for equal basis probabilities, p_x^2 for an
        asymmetric protocol keeping only X).
    (b) Weak coherent pulses with vacuum + weak decoy (GLLP, Ma 2005 Eq. 1) at fixed intensities
        ``mu`` and ``nu``; gains, QBERs and Y_0 (the gain at mu = 0) are those :func:`predict_bb84`
        gives for ``model`` with each distance substituted. Each intensity's after-pulse term uses a
        train of identical pulses (see :func:`predict_bb84`).
    ``model`` supplies every parameter except the distance (default: Lim 2014's set).
    Both rates are clipped at 0.
    """
    template = model if model is not None else ChannelModel(distance_km=0.0)
    if not 0.0 < sifting <= 1.0:
        raise ConfigError("sifting", f"must be in (0, 1], got {sifting}")
    if not f >= 1.0:
        raise ConfigError("f", f"reconciliation inefficiency must be >= 1, got {f}")
    distances = np.atleast_1d(np.asarray(distances_km, dtype=np.float64))
    if distances.ndim != 1 or np.any(~np.isfinite(distances)) or np.any(distances < 0.0):
        raise ConfigError("distances_km", "must be a 1-D array of finite lengths >= 0")
    eta = 10.0 ** (-template.attenuation_db_per_km * distances / 10.0) * template.detector_efficiency

    def predict(source: Source, intensity: float) -> BB84Prediction:
        return _prediction(eta, template, source, intensity, None)

    single = predict("single-photon", 1.0)
    h_single = np.asarray(binary_entropy(single.qber))
    single_rate = np.maximum(0.0, sifting * single.detection_probability * (1.0 - (1.0 + f) * h_single))
    signal, decoy, vacuum = predict("wcp", mu), predict("wcp", nu), predict("wcp", 0.0)
    bounds = gllp_decoy_rate(
        q_mu=signal.detection_probability,
        e_mu=signal.qber,
        q_nu=decoy.detection_probability,
        e_nu=decoy.qber,
        y0=vacuum.detection_probability,
        mu=mu,
        nu=nu,
        f=f,
        q=sifting,
    )
    return KeyRateCurves(
        distances_km=distances,
        single_photon=single,
        single_photon_rate=single_rate,
        signal=signal,
        decoy=decoy,
        vacuum=vacuum,
        decoy_bounds=bounds,
        decoy_rate=np.maximum(0.0, np.asarray(bounds.rate)),
    )
