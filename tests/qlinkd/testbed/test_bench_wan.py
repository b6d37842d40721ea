"""The benchmarks over the WAN emulator: `bench/_deploy.running(wan=...)` puts the proxies on the links of a
fresh deployment for the length of the run, and `bench/bench_link.py --wan` measures through them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import ConfigError
from tests.paths import REPO

# The scripts import their shared helper as a sibling module, as they do when run from bench/.
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import _deploy as deploy
import bench_link

A, B = "hospital-a", "hospital-b"
PULSES = 200_000


def test_a_bad_spec_fails_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught, deploy.running(tmp_path / "deploy", wan="5"):
        pass
    assert caught.value.field == "delay"
    assert not (tmp_path / "deploy").exists()


def test_running_with_wan_routes_the_links_through_proxies_for_the_run(tmp_path: Path) -> None:
    with deploy.running(tmp_path / "deploy", wan="0ms", pulses_per_round=PULSES) as started:
        links = started.wan
        assert links is not None
        assert set(links.data) == {A, B}
        deploy.wait_for(lambda: deploy.last_committed(started.deployment, A) >= 1, 60.0, "a committed round")
        assert links.statistics()["classical"].downstream_delivered > 0
        links.cut_classical()
        assert links.classical.is_cut and not links.data[A].is_cut
        links.restore()
        assert not links.classical.is_cut
    with pytest.raises(ValueError, match="not running"):  # the proxies ended with the run
        links.cut()


def test_bench_link_measures_through_the_proxy() -> None:
    result = bench_link.one_run("bb84", PULSES, 1.0, 10.0, wan="2ms")
    assert result.first_key_s is not None
    assert result.wan_classical_bytes is not None and result.wan_classical_bytes > 0


@pytest.mark.parametrize(("spec", "named"), [("25", "delay"), ("5ms,1ms,2", "loss"), ("5ms,,", "jitter")])
def test_bench_link_refuses_a_bad_wan_setting(
    spec: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        bench_link.main(["--wan", "none", "--wan", spec])
    assert caught.value.code == 2
    assert f"argument --wan: {named}:" in capsys.readouterr().err
