"""The systemd units: the settings the daemons rely on, and a hardening score of 2.5 or better."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

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
