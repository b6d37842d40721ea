"""E91 keyed as deployed systems key it (issue 15): BBM92 on two conjugate bases, CHSH as the witness.

Statistical tolerances are derived from the counts at Z_1E6 standard deviations (two-sided 1e-6); every
run has a fixed seed.
"""

from __future__ import annotations

import math

from qlinkmed.qcore.channel import (
    ALICE_ANGLES8,
    BOB_ANGLES8,
    E91_ALICE_PROBABILITIES,
    E91_BOB_PROBABILITIES,
    Eavesdropper,
    EveKind,
)
from qlinkmed.qcore.channel_model import ChannelModel, predict_e91
from qlinkmed.qcore.finite_bb84 import tomamichel_length
from qlinkmed.qcore.finite_e91 import FAIR_SAMPLING_NOTE, e91_length
from qlinkmed.qcore.params import E91Security, ProtocolKind
from qlinkmed.qcore.sifting import E91_CHSH_SETTINGS, E91_CHSH_SIGNS, E91_KEY_SETTINGS
from qlinkmed.qcore.sim import SimConfig, run_simulation

Z_1E6 = 4.89
PAIRS = 20_000_000
ZERO_KM = ChannelModel(distance_km=0.0)  # the default detectors: 10 % efficiency, 4 % after-pulses


def _chsh_band(trials: int) -> float:
    # Four correlators with a quarter of the trials each; Var(E_ab) <= 1 / N_ab.
    return Z_1E6 * math.sqrt(4 * 4 / trials)


def test_key_settings_are_conjugate_and_chsh_settings_are_optimal() -> None:
    # Key pairs measure at equal angles (a singlet-like |Phi+> gives equal outcomes), and Alice's two
    # bases are pi/4 apart as polarisation angles: mutually unbiased, as BBM92 needs.
    for a, b in E91_KEY_SETTINGS:
        assert ALICE_ANGLES8[a] == BOB_ANGLES8[b]
    assert abs(int(ALICE_ANGLES8[1]) - int(ALICE_ANGLES8[0])) == 2  # units of pi/8
    # E(a, b) = cos(2 (theta_a - theta_b)) for |Phi+>: the fixed signs give Tsirelson's 2 sqrt 2.
    s = sum(
        sign * math.cos(2 * (int(ALICE_ANGLES8[a]) - int(BOB_ANGLES8[b])) * math.pi / 8)
        for (a, b), sign in zip(E91_CHSH_SETTINGS, E91_CHSH_SIGNS, strict=True)
    )
    assert math.isclose(s, 2 * math.sqrt(2))
    assert math.isclose(sum(E91_ALICE_PROBABILITIES), 1) and math.isclose(sum(E91_BOB_PROBABILITIES), 1)


def test_default_detectors_key_at_2e7_pairs_with_the_bbm92_length() -> None:
    result = run_simulation(SimConfig(protocol=ProtocolKind.E91, qubits=PAIRS, channel=ZERO_KM, seed=11))
    r = result.report()
    assert not r["aborted"], r["abort_detail"]
    assert r["keys_equal"] and r["alice_key_sha256"] == r["bob_key_sha256"]
    assert r["final_key_bits"] > 0
    # The privacy-amplification output is Tomamichel 2012's length on the same counts, leak counted once.
    expected = tomamichel_length(r["raw_key_bits"], r["sample_bits"], r["qber"], float(r["leaked_ec_bits"]))
    assert r["pa_output_bits"] == expected.length
    assert r["final_key_bits"] == r["pa_output_bits"] - r["auth_cost_bits"]
    # The witness: S within its statistical band of 2 sqrt 2 (1 - 2Q), with the interval reported.
    assert result.bob.statistics is not None
    trials = result.bob.statistics.chsh_trials
    q_band = Z_1E6 * math.sqrt(r["qber"] * (1 - r["qber"]) / r["sample_bits"])
    honest = 2 * math.sqrt(2) * (1 - 2 * r["qber"])
    assert abs(r["chsh_s"] - honest) <= _chsh_band(trials) + 4 * math.sqrt(2) * q_band
    assert r["chsh_lower"] > 2.0
    assert math.isclose(r["chsh_upper"] - r["chsh_s"], r["chsh_s"] - r["chsh_lower"])
    assert r["e91_security"] == "bbm92" and r["security_assumption"] is None


def test_intercept_resend_on_every_pair_aborts_with_s_near_sqrt2_v() -> None:
    config = SimConfig(
        protocol=ProtocolKind.E91,
        qubits=PAIRS,
        channel=ZERO_KM,
        eve=Eavesdropper(kind=EveKind.INTERCEPT_RESEND, fraction=1.0),
        seed=12,
    )
    result = run_simulation(config)
    r = result.report()
    assert r["aborted"] and r["abort_reason"] == "chsh_not_violated"
    assert r["final_key_bits"] == 0
    assert result.bob.statistics is not None
    visibility = float(predict_e91(config.channel).chsh) / (2 * math.sqrt(2))
    assert abs(r["chsh_s"] - math.sqrt(2) * visibility) <= _chsh_band(result.bob.statistics.chsh_trials)


def test_device_independent_mode_counts_the_leak_once_and_says_fair_sampling() -> None:
    # A cleaner channel (no after-pulses, 30 % detectors) so the device-independent bound can key.
    channel = ChannelModel(distance_km=0.0, detector_efficiency=0.3, afterpulse=0.0)
    config = SimConfig(
        protocol=ProtocolKind.E91,
        qubits=4_000_000,
        channel=channel,
        seed=13,
        e91_security=E91Security.DEVICE_INDEPENDENT,
    )
    r = run_simulation(config).report()
    assert r["security_assumption"] == FAIR_SAMPLING_NOTE and "fair sampling" in FAIR_SAMPLING_NOTE
    assert not r["aborted"], r["abort_detail"]
    assert r["keys_equal"]
    expected = e91_length(
        r["raw_key_bits"], r["sample_bits"], r["qber"], r["chsh_lower"], float(r["leaked_ec_bits"])
    )
    assert r["pa_output_bits"] == expected.length > 0
