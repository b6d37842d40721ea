"""`qlink testbed init --protocol bb84-decoy`: the facilities are told the channel's fibre, so their
source is the optimiser's for it, and the round size printed is the one the daemons will run."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.decoy_optimiser import optimise
from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.testbed.deployment import read_deployment
from tests.cli import qlink


def test_testbed_init_bb84_decoy_writes_the_channels_fibre_to_both_peers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    code, out, err = qlink(
        capsys, "testbed", "init", str(root), "--protocol", "bb84-decoy", "--distance-km", "25"
    )
    assert code == 0, err
    deployment = read_deployment(root)
    assert load_channel_config(deployment.channel).fiber.distance_km == 25.0
    peers = [load_facility_config(path).peers[0] for path in deployment.facilities.values()]
    for peer in peers:
        assert peer.protocol_name == "bb84-decoy" and peer.fibre_km == 25.0 and peer.decoy is not None
    # The default round at 25 km: 2e7 is expected to key ~6 kbit, below the comfortable 1e4; 5e7 keys more.
    assert {p.pulses_per_round for p in peers} == {50_000_000}
    expected = optimise(ChannelModel(distance_km=25.0), 50_000_000, 1e-10, 1e-10)
    assert all(p.decoy is not None and p.decoy.source == expected for p in peers)
    assert "50,000,000 pulses per round" in out and "p_x" in out


def test_testbed_init_refuses_a_fibre_no_decoy_round_keys_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = qlink(
        capsys, "testbed", "init", str(tmp_path / "tb"), "--protocol", "bb84-decoy", "--distance-km", "250"
    )
    assert code == 1 and "fibre_km" in err and "no key" in err
