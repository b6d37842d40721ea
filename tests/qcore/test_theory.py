"""Asymptotic rates (docs/references.md §2 values) and exact channel predictions (its §1 click model)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy.optimize import brentq

from qlinkmed.qcore.channel_model import (
    ChannelModel,
    Source,
    lim2014_error_model,
    predict_bb84,
    predict_e91,
    secret_key_rate_curves,
)
from qlinkmed.qcore.constants import TSIRELSON_BOUND
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.theory import (
    binary_entropy,
    chsh_from_qber,
    di_rate,
    ec_rate,
    gllp_decoy_rate,
    seed_paper_rate_upper_bound,
    shor_preskill_rate,
)

# ----------------------------------------------------------------------------- docs/references.md §2 values

# (Q, 1 - 2h(Q), S = 2 sqrt 2 (1 - 2Q), DI rate). docs/references.md prints three decimals: the tolerance is
# half a unit of the last digit.
REFERENCE_VALUES = [
    (0.01, 0.838, 2.772, 0.777),
    (0.03, 0.611, 2.659, 0.470),
    (0.05, 0.427, 2.546, 0.225),
]
HALF_DIGIT = 5e-4


@pytest.mark.parametrize(("q", "bb84", "s", "di"), REFERENCE_VALUES)
def test_reference_values(q: float, bb84: float, s: float, di: float) -> None:
    assert shor_preskill_rate(q) == pytest.approx(bb84, abs=HALF_DIGIT)
    assert chsh_from_qber(q) == pytest.approx(s, abs=HALF_DIGIT)
    assert di_rate(chsh_from_qber(q), q) == pytest.approx(di, abs=HALF_DIGIT)


def test_reference_zeros() -> None:
    assert shor_preskill_rate(0.11) == pytest.approx(0.0, abs=HALF_DIGIT)
    # The rates take and return a float or an array; brentq calls them with floats. Below: "~ 11.0 %".
    assert brentq(lambda q: float(shor_preskill_rate(q)), 0.05, 0.2) == pytest.approx(0.110, abs=5e-4)
    assert brentq(lambda q: float(ec_rate(q, 1.16)), 0.05, 0.2) == pytest.approx(0.098, abs=5e-4)  # "~ 9.8 %"
    q_di = brentq(lambda q: float(di_rate(chsh_from_qber(q), q)), 0.02, 0.2)
    assert q_di == pytest.approx(0.071, abs=1e-3)  # "near Q ~ 7.1 %"
    assert chsh_from_qber(q_di) == pytest.approx(2.42, abs=5e-3)  # "S ~ 2.42"


def test_binary_entropy_edges_and_types() -> None:
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(-0.2) == 0.0  # clipped
    assert binary_entropy(1.3) == 0.0
    assert isinstance(binary_entropy(0.1), float)
    x = np.linspace(0.0, 1.0, 101)
    h = binary_entropy(x)
    assert isinstance(h, np.ndarray)
    assert h.shape == x.shape
    np.testing.assert_allclose(h, h[::-1], atol=1e-15)
    assert math.isnan(binary_entropy(float("nan")))


def test_ec_rate_needs_f_at_least_one() -> None:
    assert ec_rate(0.02, 1.0) == pytest.approx(shor_preskill_rate(0.02))
    with pytest.raises(ConfigError) as info:
        ec_rate(0.02, 0.9)
    assert info.value.field == "f"


def test_seed_paper_rate_is_only_an_upper_bound() -> None:
    q = np.linspace(0.0, 0.5, 51)
    upper = seed_paper_rate_upper_bound(0.3, q)
    assert np.all(upper >= 0.3 * np.asarray(ec_rate(q, 1.0)) - 1e-15)
    # It stays positive where every secure rate is zero, reaching zero only at 50 %.
    assert seed_paper_rate_upper_bound(0.3, 0.2) > 0.0 > shor_preskill_rate(0.2)
    assert seed_paper_rate_upper_bound(0.3, 0.5) == 0.0


def test_di_rate_domain() -> None:
    assert di_rate(1.9, 0.0) == -math.inf
    assert di_rate(2.0, 0.05) == pytest.approx(-binary_entropy(0.05))
    assert di_rate(3.0, 0.01) == di_rate(TSIRELSON_BOUND, 0.01)  # fluctuations above Tsirelson are clipped
    assert di_rate(TSIRELSON_BOUND, 0.0) == pytest.approx(1.0)
    rates = np.asarray(di_rate(np.array([1.5, 2.0, 2.5, 2.8]), 0.01))
    assert rates[0] == -math.inf
    assert np.all(np.diff(rates) > 0)


# ----------------------------------------------------------------------------- channel model


def test_channel_model_defaults_and_validation() -> None:
    model = ChannelModel(distance_km=25.0)
    assert (model.attenuation_db_per_km, model.detector_efficiency) == (0.2, 0.10)
    assert (model.dark_count, model.afterpulse, model.misalignment) == (6e-7, 4e-2, 5e-3)
    assert model.transmittance == pytest.approx(model.channel_transmittance * 0.1)
    with pytest.raises(TypeError):
        ChannelModel(25.0)  # type: ignore[call-arg]  # deliberately positional: the fields are keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.distance_km = 3.0  # type: ignore[misc]  # deliberately assigned: the model is frozen
    bad = {
        "distance_km": -1.0,
        "attenuation_db_per_km": -0.1,
        "detector_efficiency": 0.0,
        "dark_count": 1.0,
        "afterpulse": 1.5,
        "misalignment": 0.6,
    }
    for field, value in bad.items():
        kwargs = {"distance_km": 10.0, field: value}
        with pytest.raises(ConfigError) as info:
            ChannelModel(**kwargs)
        assert info.value.field == field
    with pytest.raises(ConfigError):
        ChannelModel(distance_km=math.inf)


def test_photon_survival_sanity_figure() -> None:
    # docs/references.md §1: a photon survives 50 km of fibre with ~10 % probability and 200 km with ~0.01 %.
    assert ChannelModel(distance_km=50).channel_transmittance == pytest.approx(0.10, rel=1e-12)
    assert ChannelModel(distance_km=200).channel_transmittance == pytest.approx(1e-4, rel=1e-12)


def test_noiseless_single_photon_qber_is_the_misalignment() -> None:
    model = ChannelModel(distance_km=30, dark_count=0.0, afterpulse=0.0, misalignment=0.03)
    pred = predict_bb84(model, "single-photon")
    assert pred.detection_probability == pytest.approx(model.transmittance, rel=1e-12)
    assert pred.qber == pytest.approx(0.03, rel=1e-12)
    assert pred.afterpulse_probability == 0.0


def test_qber_tends_to_misalignment_as_dark_counts_vanish() -> None:
    errors: list[float] = []
    for p_dc in (1e-3, 1e-5, 1e-7, 1e-9, 0.0):
        model = ChannelModel(distance_km=50, dark_count=p_dc, afterpulse=0.0, misalignment=0.01)
        errors.append(abs(float(predict_bb84(model).qber) - 0.01))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-15
    # A weak coherent pulse reaches e_mis as the signal weakens (double clicks vanish).
    model = ChannelModel(distance_km=50, dark_count=0.0, afterpulse=0.0, misalignment=0.01)
    assert predict_bb84(model, "wcp", mu=1e-4).qber == pytest.approx(0.01, rel=1e-5)


def test_qber_tends_to_one_half_at_long_distance() -> None:
    qbers = [predict_bb84(ChannelModel(distance_km=d)).qber for d in (50, 200, 300, 400, 600)]
    assert all(a < b for a, b in itertools.pairwise(qbers))
    assert qbers[-1] > 0.499
    assert predict_bb84(ChannelModel(distance_km=600), "wcp", mu=0.5).qber > 0.499


def test_vacuum_pulses_give_random_bits() -> None:
    pred = predict_bb84(ChannelModel(distance_km=10), "wcp", mu=0.0)
    assert pred.qber == pytest.approx(0.5)
    dark = 1 - (1 - 6e-7) ** 2  # either detector, and the previous (vacuum) gate's click probability
    after = 4e-2 * dark
    assert pred.detection_probability == pytest.approx(1 - (1 - dark) * (1 - after), rel=1e-12)
    silent = ChannelModel(distance_km=10, dark_count=0.0, afterpulse=0.0)
    assert predict_bb84(silent, "wcp", mu=0.0).qber == 0.5  # convention when nothing can click


def test_predict_bb84_checks_its_arguments() -> None:
    model = ChannelModel(distance_km=10)
    with pytest.raises(ConfigError) as info:
        predict_bb84(model, "laser")  # type: ignore[arg-type]  # deliberately no Source: the runtime refusal
    assert info.value.field == "source"
    with pytest.raises(ConfigError):
        predict_bb84(model, "wcp", mu=-0.1)
    with pytest.raises(ConfigError):
        predict_bb84(model, "wcp", mu=0.5, previous_click_probability=1.5)


def _simulate_bb84_clicks(
    rng: np.random.Generator, n: int, model: ChannelModel, source: Source, mu: float
) -> tuple[int, int]:
    """An independent sampler of the click model, gate by gate (realised after-pulse chain)."""
    eta, e = model.transmittance, model.misalignment
    if source == "single-photon":
        arrived = rng.random(n) < eta
        wrong = rng.random(n) < e
        sig_c, sig_w = arrived & ~wrong, arrived & wrong
    else:
        photons = rng.poisson(eta * mu, n)
        to_wrong = rng.binomial(photons, e)
        sig_c, sig_w = (photons - to_wrong) > 0, to_wrong > 0
    fire_c = sig_c | (rng.random(n) < model.dark_count)
    fire_w = sig_w | (rng.random(n) < model.dark_count)
    clicked = fire_c | fire_w  # from signal or dark count: the only clicks that cause after-pulses
    after = np.zeros(n, dtype=bool)
    after[1:] = clicked[:-1] & (rng.random(n - 1) < model.afterpulse)
    on_c = rng.random(n) < 0.5
    fire_c = fire_c | (after & on_c)
    fire_w = fire_w | (after & ~on_c)
    detected = fire_c | fire_w
    coin = rng.random(n) < 0.5
    error = (fire_w & ~fire_c) | (fire_w & fire_c & coin)
    return int(detected.sum()), int(error.sum())


@pytest.mark.parametrize(("source", "mu"), [("single-photon", 1.0), ("wcp", 0.8), ("wcp", 0.05)])
def test_predict_bb84_matches_monte_carlo(source: Source, mu: float) -> None:
    # Exaggerated noise so that every contribution (double clicks, darks, after-pulses) matters.
    model = ChannelModel(
        distance_km=5.0, detector_efficiency=0.5, dark_count=0.02, afterpulse=0.2, misalignment=0.05
    )
    n = 2_000_000
    detected, errors = _simulate_bb84_clicks(np.random.default_rng(20240601), n, model, source, mu)
    pred = predict_bb84(model, source, mu)
    for count, p in ((detected, float(pred.detection_probability)), (errors, float(pred.error_probability))):
        sigma = math.sqrt(n * p * (1 - p))  # binomial standard error of the count
        assert abs(count - n * p) < 5 * sigma, (count, n * p, sigma)


def test_predict_e91_matches_monte_carlo() -> None:
    model = ChannelModel(
        distance_km=20.0, detector_efficiency=0.5, dark_count=0.02, afterpulse=0.2, misalignment=0.05
    )
    pred = predict_e91(model)
    rng = np.random.default_rng(99)
    n = 2_000_000
    eta_arm = 10 ** (-0.2 * 10.0 / 10) * 0.5
    # Ideal outcomes at a matching setting (equal bits) and at a CHSH setting with <AB> = 1/sqrt 2.
    ideal_a = rng.random(n) < 0.5
    same_chsh = rng.random(n) < (1 + 1 / math.sqrt(2)) / 2
    results = {}
    for name, ideal_b in (("key", ideal_a), ("chsh", np.where(same_chsh, ideal_a, ~ideal_a))):
        sides = []
        for ideal in (ideal_a, ideal_b):
            arrived = rng.random(n) < eta_arm
            flipped = rng.random(n) < model.misalignment
            out = ideal ^ flipped
            fire1 = (arrived & out) | (rng.random(n) < model.dark_count)
            fire0 = (arrived & ~out) | (rng.random(n) < model.dark_count)
            clicked = fire0 | fire1
            after = np.zeros(n, dtype=bool)
            after[1:] = clicked[:-1] & (rng.random(n - 1) < model.afterpulse)
            which = rng.random(n) < 0.5
            fire1 |= after & which
            fire0 |= after & ~which
            bit = np.where(fire0 & fire1, rng.random(n) < 0.5, fire1)
            sides.append((fire0 | fire1, bit))
        (det_a, bit_a), (det_b, bit_b) = sides
        both = det_a & det_b
        results[name] = (int(both.sum()), int(np.count_nonzero(bit_a[both] != bit_b[both])))
    coincidences, key_errors = results["key"]
    p = pred.coincidence_probability
    assert abs(coincidences - n * p) < 5 * math.sqrt(n * p * (1 - p))
    q = pred.qber
    assert abs(key_errors - coincidences * q) < 5 * math.sqrt(coincidences * q * (1 - q))
    chsh_coinc, chsh_disagree = results["chsh"]
    correlator = 1 - 2 * chsh_disagree / chsh_coinc
    assert correlator == pytest.approx(pred.visibility / math.sqrt(2), abs=5 / math.sqrt(chsh_coinc))


def test_predict_e91_structure() -> None:
    model = ChannelModel(distance_km=40.0)
    pred = predict_e91(model)
    half = predict_bb84(dataclasses.replace(model, distance_km=20.0))
    assert pred.arm_detection_probability == pytest.approx(half.detection_probability)
    assert pred.coincidence_probability == pytest.approx(half.detection_probability**2)
    assert pred.visibility == pytest.approx((1 - 2 * half.qber) ** 2)
    assert pred.chsh == pytest.approx(chsh_from_qber(pred.qber))
    noiseless = ChannelModel(distance_km=40.0, dark_count=0.0, afterpulse=0.0, misalignment=0.0)
    assert predict_e91(noiseless).chsh == pytest.approx(TSIRELSON_BOUND)
    flipped = predict_e91(noiseless, arm_flip=0.02)
    assert flipped.qber == pytest.approx(2 * 0.02 * 0.98)
    with pytest.raises(ConfigError):
        predict_e91(model, arm_flip=0.7)


def test_lim2014_error_model_literal() -> None:
    model = ChannelModel(distance_km=25.0)
    k = 0.5
    eta_ch = 10 ** (-0.2 * 25 / 10)
    d_k = 1 - (1 - 2 * 6e-7) * math.exp(-eta_ch * 0.1 * k)
    e_k = 6e-7 + 5e-3 * (1 - math.exp(-eta_ch * k)) + 4e-2 * d_k / 2
    lim = lim2014_error_model(model, k)
    assert lim.detection_rate == pytest.approx(d_k, rel=1e-12)
    assert lim.detection_rate_with_afterpulses == pytest.approx(d_k * 1.04, rel=1e-12)
    assert lim.error_probability == pytest.approx(e_k, rel=1e-12)
    assert lim.qber == pytest.approx(e_k / (d_k * 1.04), rel=1e-12)
    with pytest.raises(ConfigError):
        lim2014_error_model(model, k, misalignment_transmittance="fibre")  # type: ignore[arg-type]  # deliberately unknown: the runtime refusal


@pytest.mark.parametrize("distance", [0.0, 10.0, 50.0, 100.0, 150.0])
def test_exact_model_agrees_with_lim2014_to_first_order(distance: float) -> None:
    # With eta_sys in the misalignment term, Lim's expectations are the first-order expansion of the
    # exact click model: they differ by terms of relative size p_ap D and e_mis D (double clicks).
    model = ChannelModel(distance_km=distance)
    for mu in (0.5, 0.1):
        exact = predict_bb84(model, "wcp", mu)
        lim = lim2014_error_model(model, mu, misalignment_transmittance="system")
        assert exact.detection_probability == pytest.approx(lim.detection_rate_with_afterpulses, rel=0.01)
        assert exact.error_probability == pytest.approx(lim.error_probability, rel=0.03)


# ----------------------------------------------------------------------------- decoy states


def test_gllp_bounds_bracket_the_true_single_photon_values() -> None:
    # Without after-pulses the yields are exact: Y_n = 1 - (1 - p_dc)^2 (1 - eta)^n.
    for distance in (10.0, 50.0, 100.0):
        model = ChannelModel(distance_km=distance, afterpulse=0.0)
        mu, nu = 0.5, 0.1
        signal = predict_bb84(model, "wcp", mu)
        decoy = predict_bb84(model, "wcp", nu)
        vacuum = predict_bb84(model, "wcp", 0.0)
        single = predict_bb84(model, "single-photon")
        bounds = gllp_decoy_rate(
            q_mu=signal.detection_probability,
            e_mu=signal.qber,
            q_nu=decoy.detection_probability,
            e_nu=decoy.qber,
            y0=vacuum.detection_probability,
            mu=mu,
            nu=nu,
        )
        y1 = single.detection_probability
        assert bounds.y1_lower <= y1
        assert bounds.y1_lower > 0.95 * y1
        assert bounds.e1_upper >= single.qber
        assert bounds.q1_lower == pytest.approx(mu * math.exp(-mu) * bounds.y1_lower)
        assert bounds.rate > 0.0


def test_gllp_without_single_photons_has_no_key() -> None:
    # Decoy gain far too low for the signal gain (photon-number splitting): Y_1 has no positive bound.
    bounds = gllp_decoy_rate(q_mu=1e-3, e_mu=0.02, q_nu=1e-5, e_nu=0.02, y0=1e-6, mu=0.5, nu=0.1)
    assert bounds.y1_lower <= 0.0
    assert bounds.q1_lower == 0.0
    assert bounds.e1_upper == 0.5
    assert bounds.rate < 0.0


def test_gllp_checks_its_arguments() -> None:
    kwargs = {"q_mu": 1e-3, "e_mu": 0.02, "q_nu": 2e-4, "e_nu": 0.02, "y0": 1e-6}
    with pytest.raises(ConfigError) as info:
        gllp_decoy_rate(**kwargs, mu=0.1, nu=0.5)
    assert info.value.field == "nu"
    with pytest.raises(ConfigError):
        gllp_decoy_rate(**kwargs, mu=0.5, nu=0.1, f=0.5)
    with pytest.raises(ConfigError):
        gllp_decoy_rate(**kwargs, mu=0.5, nu=0.1, q=0.0)


def test_secret_key_rate_curves() -> None:
    distances = np.arange(0.0, 301.0, 10.0)
    curves = secret_key_rate_curves(distances)
    assert curves.single_photon_rate.shape == distances.shape
    assert curves.decoy_rate.shape == distances.shape
    assert np.all(curves.single_photon_rate >= 0.0)
    assert np.all(curves.decoy_rate >= 0.0)
    assert np.all(np.diff(curves.single_photon_rate) <= 0.0)
    assert np.all(np.diff(curves.decoy_rate) <= 0.0)
    assert np.all(curves.decoy_rate <= curves.single_photon_rate)
    at = dict(zip(distances.tolist(), curves.decoy_rate.tolist(), strict=True))
    assert at[100.0] > 0.0
    assert at[300.0] == 0.0
    # Pointwise consistency with the scalar predictions.
    model = ChannelModel(distance_km=50.0)
    i = int(np.flatnonzero(distances == 50.0)[0])
    single = predict_bb84(model)
    expected = 0.5 * single.detection_probability * float(ec_rate(single.qber, 1.16))
    assert curves.single_photon_rate[i] == pytest.approx(expected)
    assert np.asarray(curves.signal.qber)[i] == pytest.approx(predict_bb84(model, "wcp", 0.5).qber)


def test_secret_key_rate_curves_checks_its_arguments() -> None:
    with pytest.raises(ConfigError):
        secret_key_rate_curves(np.array([-1.0, 10.0]))
    with pytest.raises(ConfigError):
        secret_key_rate_curves(np.array([10.0]), sifting=0.0)
    with pytest.raises(ConfigError):
        secret_key_rate_curves(np.array([10.0]), mu=0.1, nu=0.5)
