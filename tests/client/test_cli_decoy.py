"""`qlink sim bb84 --source wcp` picks the decoy parameters, prints them, and obeys explicit ones."""

from __future__ import annotations

import json

import pytest

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.decoy_optimiser import optimise
from tests.cli import qlink

WCP_25KM_1E8 = ("sim", "bb84", "--source", "wcp", "--qubits", "1e8", "--distance-km", "25", "--seed", "5")


def test_wcp_keys_at_25_km_with_1e8_pulses_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: the fixed source (mu 0.5/0.1, 0.7/0.2/0.1) aborted here with decoy_bound_empty.
    code, out, err = qlink(capsys, *WCP_25KM_1E8, "--json")
    assert code == 0, err
    report = json.loads(out)
    chosen = optimise(ChannelModel(distance_km=25.0), 10**8, 1e-10, 1e-10)
    assert report["decoy_optimised"] is True
    assert report["decoy_intensities"] == list(chosen.intensities)
    assert report["decoy_probabilities"] == list(chosen.probabilities)
    assert report["final_key_bits"] > 0


def test_the_text_report_prints_the_chosen_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = qlink(capsys, *WCP_25KM_1E8)
    assert code == 0
    chosen = optimise(ChannelModel(distance_km=25.0), 10**8, 1e-10, 1e-10)
    line = next(row for row in out.splitlines() if row.startswith("decoy source"))
    assert f"{chosen.intensities[0]:.4g}" in line and "optimised" in line


def test_explicit_flags_override_the_optimiser(capsys: pytest.CaptureFixture[str]) -> None:
    # The old fixed source, given explicitly, is used as given (and still aborts at 25 km, 1e8 pulses).
    code, out, _ = qlink(
        capsys,
        *WCP_25KM_1E8,
        "--mu",
        "0.5",
        "--decoy-mu2",
        "0.1",
        "--decoy-probabilities",
        "0.7",
        "0.2",
        "0.1",
        "--json",
    )
    report = json.loads(out)
    assert report["decoy_optimised"] is False
    assert report["decoy_intensities"][:2] == [0.5, 0.1]
    assert report["decoy_probabilities"] == [0.7, 0.2, 0.1]
    assert code == 3 and report["abort_reason"] == "decoy_bound_empty"


def test_one_explicit_flag_keeps_the_other_optimised_values(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = qlink(capsys, *WCP_25KM_1E8, "--mu", "0.45", "--json")
    report = json.loads(out)
    chosen = optimise(ChannelModel(distance_km=25.0), 10**8, 1e-10, 1e-10)
    assert report["decoy_intensities"] == [0.45, chosen.intensities[1], chosen.intensities[2]]
    assert report["decoy_probabilities"] == list(chosen.probabilities)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--decoy-probabilities", "0.5", "0.2", "0.1"], "--decoy-probabilities"),
        (["--decoy-probabilities", "0.5", "0.5"], "--decoy-probabilities"),
        (["--mu", "0.1", "--decoy-mu2", "0.2"], "--mu"),
        (["--decoy-mu2", "0"], "--decoy-mu2"),
        (["--p-x", "1"], "--p-x"),
        (["--p-x", "0"], "--p-x"),
    ],
)
def test_bad_decoy_flags_are_refused_by_name(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    code, _, err = qlink(capsys, "sim", "bb84", "--source", "wcp", "--qubits", "1e6", *args)
    assert code == 2
    assert named in err


def test_p_x_overrides_the_optimised_basis_bias(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = qlink(capsys, *WCP_25KM_1E8, "--p-x", "0.5", "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["decoy_p_x"] == 0.5
    assert report["decoy_p_x"] != optimise(ChannelModel(distance_km=25.0), 10**8, 1e-10, 1e-10).p_x
