"""The systemd units: the settings the daemons rely on, and a hardening score of 2.5 or better."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from qlinkmed.client import cli
from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.ops.config import load_facility_config
from tests.paths import REPO

SYSTEMD = REPO / "systemd"
# (unit file, name it is analysed under: a template needs an instance)
UNITS = [("qlinkd@.service", "qlinkd@hospital-a.service"), ("qlink-channel.service", "qlink-channel.service")]
MAX_EXPOSURE = 2.5


def _settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; systemd allows a key to repeat, so no configparser."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path.name}: not key=value: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize(("unit", "_"), UNITS)
def test_unit_has_the_settings_the_daemon_relies_on(unit: str, _: str) -> None:
    settings = _settings(SYSTEMD / unit)
    service, meta = settings["Service"], settings["Unit"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["10"]
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] and service["StateDirectoryMode"] == ["0700"]
    assert service["UMask"] == ["0077"]
    assert len(meta["Documentation"]) >= 2
    assert any("--check-config" in command for command in service["ExecStartPre"])
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert service["CapabilityBoundingSet"] == [""]
    assert settings["Install"]["WantedBy"] == ["multi-user.target"]


def test_template_is_per_facility() -> None:
    service = _settings(SYSTEMD / "qlinkd@.service")["Service"]
    assert service["ExecStart"] == ["/usr/bin/qlinkd --config /etc/qlink/%i.toml"]
    assert service["ExecStartPre"] == ["/usr/bin/qlinkd --check-config /etc/qlink/%i.toml"]
    assert service["StateDirectory"] == ["qlinkd/%i"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(("unit", "name"), UNITS)
def test_exposure_score(unit: str, name: str, tmp_path: Path) -> None:
    target = tmp_path / name
    shutil.copy(SYSTEMD / unit, target)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot analyse offline: {proc.stderr.strip()[:200]}")
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


# ---- the example configurations ---------------------------------------------------------------------------
EXAMPLES = SYSTEMD / "examples"
FACILITY_EXAMPLES = ("hospital-a.toml", "hospital-b.toml")


def _setup_commands() -> list[str]:
    """The commands the examples' headers give for the files they name (lines `#   $ COMMAND`)."""
    commands = []
    for example in sorted(EXAMPLES.glob("*.toml")):
        for line in example.read_text().splitlines():
            command = line.removeprefix("#").strip()
            if command.startswith("$ "):
                commands.append(command[2:])
    return commands


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples in a fresh directory with exactly the files their headers' commands make, and nothing
    else: a file an example names that no command makes fails the load."""
    root = tmp_path_factory.mktemp("etc-qlink")
    for example in EXAMPLES.glob("*.toml"):
        shutil.copy(example, root / example.name)
    commands = _setup_commands()
    assert any(c.startswith("qlink ca init ") for c in commands), commands
    for command in commands:
        words = shlex.split(command)
        if words[0] == "qlink":
            # The real CLI in this process: the `qlink` on PATH may be another installation.
            with contextlib.chdir(root):
                assert cli.main(words[1:]) == 0, command
        else:
            subprocess.run(["sh", "-ec", command], cwd=root, check=True, timeout=60)
    return root


def test_the_example_set_names_no_file_it_does_not_describe(etc: Path) -> None:
    configs = {name: load_facility_config(etc / name) for name in FACILITY_EXAMPLES}
    channel = load_channel_config(etc / "channel.toml")
    assert {link.a for link in channel.links} | {link.b for link in channel.links} == {
        c.id for c in configs.values()
    }
    psk = etc / "psk" / "hospital-a--hospital-b.key"
    assert psk.stat().st_mode & 0o077 == 0 and psk.stat().st_size >= 1024


@pytest.mark.parametrize("name", FACILITY_EXAMPLES)
def test_each_facility_example_has_a_data_plane_every_gateway_and_metrics(etc: Path, name: str) -> None:
    config = load_facility_config(etc / name)
    (peer,) = config.peers
    assert config.listen.data is not None and peer.data_address is not None
    gateways = config.gateways
    assert gateways.dicom is not None and gateways.mllp is not None and gateways.fhir is not None
    assert [r.peer for r in gateways.dicom.routes] == [peer.id]
    assert [d.name for d in gateways.dicom.destinations] == ["pacs"]
    assert gateways.mllp.listen is not None and [r.peer for r in gateways.mllp.routes] == [peer.id]
    assert [d.name for d in gateways.mllp.destinations] == ["engine"]
    assert gateways.fhir.token_file is not None and len(gateways.fhir.destinations) == 1
    assert config.metrics is not None and config.metrics.client_ca is not None


def test_the_examples_fit_together_on_one_host(etc: Path) -> None:
    """As shipped they run side by side: each dials the other's listeners, and no two listeners share a
    port."""
    a, b = (load_facility_config(etc / name) for name in FACILITY_EXAMPLES)
    channel = load_channel_config(etc / "channel.toml")
    for me, other in ((a, b), (b, a)):
        (peer,) = me.peers
        assert peer.id == other.id
        assert (peer.address, peer.data_address) == (other.listen.classical, other.listen.data)
        assert me.channel == channel.listen
        assert peer.preshared == other.peers[0].preshared
        # What the hello compares: a difference would refuse every connection (the shipped examples once
        # said 1e6 pulses at hospital-a while hospital-b took the default, 2e7).
        theirs = other.peers[0]
        assert (peer.protocol_name, peer.pulses_per_round, peer.rounds_in_flight, peer.pq_hybrid) == (
            theirs.protocol_name,
            theirs.pulses_per_round,
            theirs.rounds_in_flight,
            theirs.pq_hybrid,
        )
        assert peer.distill_config() == theirs.distill_config()
    ports = [channel.listen.port, channel.admin.port]
    for c in (a, b):
        gw = c.gateways
        assert gw.dicom is not None and gw.mllp is not None and gw.fhir is not None and c.metrics is not None
        assert gw.mllp.listen is not None and c.listen.data is not None
        ports += [c.listen.classical.port, c.listen.kme.port, c.listen.local.port, c.listen.data.port]
        ports += [gw.dicom.listen.port, gw.mllp.listen.port, gw.fhir.listen.port, c.metrics.listen.port]
    assert len(ports) == len(set(ports)), sorted(ports)
