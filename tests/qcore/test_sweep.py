"""The distance sweep's point specs, memory estimates and finite-key curves (qcore.sweep), and the Eve
sweep's plot and data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from qlinkmed.client.sweep_plots import EVE_FRACTIONS, write_eve_sweep
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.decoy_optimiser import expected_decoy_length, optimise
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.security import DEFAULT_EPS_COR, DEFAULT_EPS_SEC
from qlinkmed.qcore.sim import predictions
from qlinkmed.qcore.sweep import (
    E91_MAX_PAIRS,
    SWEEP_PROTOCOLS,
    PointSpec,
    estimate_point_bytes,
    expected_key_bits,
    point_seed,
    run_point,
    sweep_points,
    theory_curves,
)


def test_points_cover_the_grid_with_the_sim_defaults() -> None:
    specs, notes = sweep_points([0, 50], [10**6, 10**7], SWEEP_PROTOCOLS, seed=3)
    assert notes == []
    assert len(specs) == 3 * 2 * 2
    assert {(s.protocol, s.distance_km, s.pulses) for s in specs} == {
        (p, d, n) for p in SWEEP_PROTOCOLS for d in (0.0, 50.0) for n in (10**6, 10**7)
    }
    decoy = next(s for s in specs if s.protocol == "decoy").sim_config()
    # The same round `qlink sim bb84 --source wcp` runs: event-driven, optimised decoy source.
    assert decoy.event_driven and decoy.decoy is None and decoy.source.value == "wcp"
    e91 = next(s for s in specs if s.protocol == "e91").sim_config()
    assert e91.protocol.value == "e91" and e91.e91_security.value == "bbm92"


def test_a_point_keeps_its_seed_whatever_else_the_sweep_holds() -> None:
    small, _ = sweep_points([25], [10**6], ["decoy"], seed=9)
    large, _ = sweep_points([0, 10, 25, 50], [10**5, 10**6], SWEEP_PROTOCOLS, seed=9)
    same = next(s for s in large if (s.protocol, s.distance_km, s.pulses) == ("decoy", 25.0, 10**6))
    assert same.seed == small[0].seed == point_seed(9, "decoy", 25.0, 10**6)
    assert len({s.seed for s in large}) == len(large)
    assert point_seed(10, "decoy", 25.0, 10**6) != same.seed


def test_e91_points_are_capped_with_a_note_and_refused_when_asked_for() -> None:
    specs, notes = sweep_points([0], [10**8, 10**10, 10**11, 10**12], ["e91"], seed=1)
    assert [s.pulses for s in specs] == [10**8, 10**10]
    assert len(notes) == 1 and "1e+11, 1e+12" in notes[0] and f"{E91_MAX_PAIRS:.0e}" in notes[0]
    with pytest.raises(ConfigError) as caught:
        sweep_points([0], [10**8], ["e91"], seed=1, e91_pulses=[10**11])
    assert caught.value.field == "e91_pulses" and "1e+11" in caught.value.message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"protocol": "bb92", "distance_km": 0.0, "pulses": 10, "seed": 1}, "protocol"),
        ({"protocol": "decoy", "distance_km": -1.0, "pulses": 10, "seed": 1}, "distances"),
        ({"protocol": "decoy", "distance_km": float("nan"), "pulses": 10, "seed": 1}, "distances"),
        ({"protocol": "decoy", "distance_km": 0.0, "pulses": 0, "seed": 1}, "pulses"),
    ],
)
def test_bad_point_specs_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PointSpec(**kwargs)
    assert caught.value.field == field


def test_memory_estimate_follows_detections_and_e91_coincidences() -> None:
    near = PointSpec(protocol="single-photon", distance_km=0.0, pulses=10**9, seed=1)
    far = PointSpec(protocol="single-photon", distance_km=100.0, pulses=10**9, seed=1)
    assert estimate_point_bytes(near) > 4 * 2**30 > estimate_point_bytes(far)
    # The measured 1e10 decoy rounds peaked at 1.33 GiB at 50 km and 4.22 GiB at 25 km
    # (docs/benchmarks.md): the estimate covers both, by less than a factor two.
    for distance, measured in ((50.0, 1.33), (25.0, 4.22)):
        decoy = PointSpec(protocol="decoy", distance_km=distance, pulses=10**10, seed=1)
        assert measured * 2**30 < estimate_point_bytes(decoy) < 2 * measured * 2**30
    # E91 runs event-driven: the estimate follows the coincidences, not 28 bytes a pair. The measured
    # rounds at 0 km (bench/bench_event_sim.py --e91) peaked at 0.43 GiB for 1e9 pairs (1.07e7
    # coincidences) and 2.20 GiB for 1e10: the estimate covers both, by less than a factor two.
    for pairs, measured in ((10**9, 0.43), (10**10, 2.20)):
        e91 = PointSpec(protocol="e91", distance_km=0.0, pulses=pairs, seed=1)
        assert measured * 2**30 < estimate_point_bytes(e91) < 2 * measured * 2**30 < 28 * pairs
    far = PointSpec(protocol="e91", distance_km=100.0, pulses=E91_MAX_PAIRS, seed=1)
    assert estimate_point_bytes(far) < 2**30


def test_decoy_curve_is_the_optimised_sources_expected_length() -> None:
    grid = np.array([0.0, 25.0, 50.0])
    n = 10**9
    curves = theory_curves(grid, pulses=[n], protocols=["decoy"], decoy_step_km=25.0)
    (curve,) = curves.finite
    for d, value in zip(grid, curve.key_per_pulse, strict=True):
        model = ChannelModel(distance_km=float(d))
        source = optimise(model, n, DEFAULT_EPS_SEC, DEFAULT_EPS_COR)
        length = expected_decoy_length(
            model, source, n, eps_sec=DEFAULT_EPS_SEC, eps_cor=DEFAULT_EPS_COR
        ).length
        assert length > 0
        assert value == length / n


def test_decoy_curve_between_its_optimised_points_falls_and_reaches_as_far_as_the_optimiser() -> None:
    curves = theory_curves(
        np.arange(0.0, 201.0, 5.0), pulses=[10**8], protocols=["decoy"], decoy_step_km=20.0
    )
    values = curves.finite[0].key_per_pulse
    assert np.all(np.diff(values) <= 0)
    # The reach is exact, not rounded down to the coarse step.
    last = float(curves.distances_km[values > 0].max())
    assert last % 20.0 != 0.0
    assert expected_key_bits("decoy", last, 10**8) > 0
    assert expected_key_bits("decoy", last + 5.0, 10**8) == 0


def test_e91_curve_keys_at_0_km_for_2e7_pairs_and_matches_the_sims_prediction() -> None:
    curves = theory_curves(np.array([0.0, 150.0]), pulses=[2 * 10**7], protocols=["e91"])
    assert curves.finite[0].key_per_pulse[0] > 0
    assert curves.finite[0].key_per_pulse[1] == 0
    assert curves.asymptotic["e91"][0] > curves.finite[0].key_per_pulse[0]
    spec = PointSpec(protocol="e91", distance_km=0.0, pulses=2 * 10**7, seed=1)
    assert expected_key_bits("e91", 0.0, 2 * 10**7) == predictions(spec.sim_config())["finite_key_bits"]


def test_e91_curve_is_zero_where_the_chsh_witness_aborts_the_round() -> None:
    # 2e7 pairs over 50 km: Tomamichel's length on the key-basis counts alone is positive, but the CHSH
    # lower bound on the mean counts is about 1.72, so every such round aborts on its witness.
    spec = PointSpec(protocol="e91", distance_km=50.0, pulses=2 * 10**7, seed=1)
    assert predictions(spec.sim_config())["finite_key_bits"] > 0
    assert expected_key_bits("e91", 50.0, 2 * 10**7) == 0
    point = run_point(spec)
    assert point.aborted and point.abort_reason == "chsh_not_violated"
    assert point.expected_key_bits == 0
    # With five times the pairs the witness holds and the curve keys again.
    assert expected_key_bits("e91", 50.0, 10**8) > 0


@pytest.mark.parametrize("protocol", ["single-photon", "decoy"])
def test_bb84_curves_match_the_sims_prediction(protocol: str) -> None:
    for distance in (0.0, 40.0):
        spec = PointSpec(protocol=protocol, distance_km=distance, pulses=10**8, seed=1)
        expected = predictions(spec.sim_config())["finite_key_bits"]
        assert expected_key_bits(protocol, distance, 10**8) == expected > 0


def test_a_simulated_point_lands_near_its_curve() -> None:
    point = run_point(PointSpec(protocol="single-photon", distance_km=20.0, pulses=2 * 10**6, seed=4))
    assert not point.aborted
    assert point.expected_key_bits == expected_key_bits("single-photon", 20.0, 2 * 10**6)
    assert abs(point.final_key_bits - point.expected_key_bits) < 0.1 * point.expected_key_bits


def test_eve_sweep_writes_csv_and_png(tmp_path: Path) -> None:
    files = write_eve_sweep(tmp_path, qubits=300_000, e91_pairs=300_000, seed=2)
    assert sorted(f.name for f in files) == ["eve_sweep.csv", "eve_sweep.png"]
    assert (tmp_path / "eve_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    eve_rows = list(csv.DictReader((tmp_path / "eve_sweep.csv").open()))
    assert len(eve_rows) == 2 * len(EVE_FRACTIONS)
    bb84 = [r for r in eve_rows if r["protocol"] == "bb84"]
    # Eve on every pulse: the QBER is far above the honest point and the round aborts.
    assert float(bb84[-1]["qber"]) > float(bb84[0]["qber"]) + 0.15
    assert bb84[-1]["aborted"] == "True"
    e91 = [r for r in eve_rows if r["protocol"] == "e91"]
    assert float(e91[-1]["chsh_s"]) < float(e91[0]["chsh_s"]) - 0.8
