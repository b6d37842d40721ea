"""`protocol = "bb84-decoy"` in a facility configuration: the source the optimiser picks for the
deployer's fibre, the explicit values that win over it, the default round size, and the refusals, each
naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.decoy_optimiser import MU3, expected_decoy_length, optimise
from qlinkmed.qcore.params import DecoySource, ProtocolKind
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.config import PeerConfig, default_round_timeout_s, load_facility_config
from qlinkmed.qlinkd.ops.decoy_source import MIN_EXPECTED_KEY_BITS, PULSES_LADDER
from tests.qlinkd.ops.test_config import _variant
from tests.qlinkd.ops.test_config import deployment as _examples

DECOY = 'protocol = "bb84-decoy"'


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped examples with the files they reference (test_config's deployment)."""
    return _examples.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined]


def _peer(examples: Path, extra: str) -> PeerConfig:
    """hospital-a's peer with protocol bb84-decoy, no round size or timeout of its own, and `extra`."""
    lines = [
        line
        for line in (examples / "hospital-a.toml").read_text().splitlines()
        if not line.startswith(("pulses_per_round", "round_timeout_s"))
    ]
    text = "\n".join(lines).replace('protocol = "bb84"', DECOY + "\n" + extra, 1)
    path = examples / f"decoy-{abs(hash(extra))}.toml"
    path.write_text(text + "\n")
    return load_facility_config(path).peer("hospital-b")


def _refusal(examples: Path, extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _peer(examples, extra)
    return caught.value


def test_the_source_is_the_optimisers_for_the_fibre_and_the_round(examples: Path) -> None:
    peer = _peer(examples, "fibre_km = 25.0\npulses_per_round = 50000000")
    expected = optimise(ChannelModel(distance_km=25.0), 50_000_000, 1e-10, 1e-10)
    assert peer.protocol is ProtocolKind.BB84 and peer.protocol_name == "bb84-decoy"
    assert peer.decoy is not None and peer.decoy.source == expected
    assert peer.distill_config().decoy == expected and peer.pulses_per_round == 50_000_000
    length = expected_decoy_length(
        ChannelModel(distance_km=25.0), expected, 50_000_000, eps_sec=1e-10, eps_cor=1e-10
    ).length
    assert peer.decoy.expected_key_bits == length > 0
    assert "p_x" in peer.decoy.summary() and "expected key" in peer.decoy.summary()


def test_explicit_values_win_over_the_optimiser(examples: Path) -> None:
    peer = _peer(examples, "fibre_km = 10.0\npulses_per_round = 50000000\nmu = 0.45\np_x = 0.8")
    base = optimise(ChannelModel(distance_km=10.0), 50_000_000, 1e-10, 1e-10)
    assert peer.decoy is not None
    assert peer.decoy.source == DecoySource(
        intensities=(0.45, base.intensities[1], MU3), probabilities=base.probabilities, p_x=0.8
    )
    # Every value given: no fibre needed, nothing optimised, no expected figure to show.
    full = _peer(
        examples,
        "mu = 0.5\ndecoy_mu2 = 0.1\ndecoy_probabilities = [0.7, 0.2, 0.1]\np_x = 0.5\n"
        "pulses_per_round = 100000",
    )
    assert full.decoy is not None and full.decoy.source == DecoySource(intensities=(0.5, 0.1, MU3))
    assert full.decoy.expected_key_bits is None and not full.decoy.optimised


def test_the_default_round_is_the_smallest_that_keys_comfortably(examples: Path) -> None:
    peer = _peer(examples, "fibre_km = 50.0")
    assert peer.decoy is not None and peer.pulses_per_round == peer.decoy.pulses_per_round
    assert peer.decoy.expected_key_bits is not None and peer.decoy.expected_key_bits >= MIN_EXPECTED_KEY_BITS
    smaller = [p for p in PULSES_LADDER if p < peer.pulses_per_round]
    channel = ChannelModel(distance_km=50.0)
    for pulses in smaller:
        source = optimise(channel, pulses, 1e-10, 1e-10)
        assert expected_decoy_length(channel, source, pulses, eps_sec=1e-10, eps_cor=1e-10).length < (
            MIN_EXPECTED_KEY_BITS
        )
    # The round timeout grows with the round unless the deployer sets one.
    assert peer.round_timeout_s == default_round_timeout_s(peer.pulses_per_round, decoy=True) > 10.0
    assert _peer(examples, "fibre_km = 50.0\nround_timeout_s = 30.0").round_timeout_s == 30.0


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("", "peer[0].fibre_km", ["required", "bb84-decoy"]),
        ("fibre_km = -3.0", "peer[0].fibre_km", ["[0, 500]"]),
        ("fibre_km = 10.0\nmu = 0.05\ndecoy_mu2 = 0.1", "peer[0].mu, decoy_mu2", ["mu1 > mu2"]),
        ("fibre_km = 10.0\ndecoy_probabilities = [0.5, 0.5]", "peer[0].decoy_probabilities", ["3 numbers"]),
        ("fibre_km = 10.0\ndecoy_probabilities = [0.5, 0.4, 0.4]", "peer[0].decoy_probabilities", ["sum"]),
        ("fibre_km = 10.0\np_x = 1.0", "peer[0].p_x", ["(0, 1)"]),
        ("fibre_km = 10.0\npulses_per_round = 5000", "peer[0].pulses_per_round", ["1e4..2e8"]),
        (
            "fibre_km = 50.0\npulses_per_round = 10000000",
            "peer[0].pulses_per_round",
            ["fibre_km = 50", "10000000", "pulses_per_round = 50000000"],
        ),
        ("fibre_km = 200.0", "peer[0].fibre_km", ["no key", "200000000"]),
    ],
)
def test_decoy_mistakes_name_the_field(
    examples: Path,
    extra: str,
    field: str,
    words: list[str],
) -> None:
    error = _refusal(examples, extra)
    assert error.field == field, error
    assert all(w in error.message for w in words), error.message


def test_source_values_on_a_single_photon_link_are_refused(examples: Path) -> None:
    path = _variant(examples, "hospital-a.toml", 'protocol = "bb84"', 'protocol = "bb84"\nfibre_km = 10.0')
    with pytest.raises(ConfigError) as caught:
        load_facility_config(path)
    assert caught.value.field == "peer[0].fibre_km" and "bb84-decoy" in caught.value.message
    path = _variant(examples, "hospital-a.toml", 'protocol = "bb84"', 'protocol = "bb84-fast"')
    with pytest.raises(ConfigError) as caught:
        load_facility_config(path)
    assert caught.value.field == "peer[0].protocol" and "bb84-decoy" in caught.value.message
