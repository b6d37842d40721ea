"""Orthanc (Debian's `orthanc`) as the receiving PACS: hospital-b forwards a study that dcmtk's `storescu`
sent to hospital-a's SCP, and Orthanc, read back through its own REST API with httpx, holds every
instance with its data set byte for byte as sent.

Orthanc binds every interface, so it runs inside a private network namespace the test creates (`ip netns
add`, a veth pair on a /30 of its own) and removes; nothing of it is reachable outside this host's veth.
Needs root (for the namespace), Orthanc and dcmtk; skips with the reason otherwise (CI runs as root and
installs both: `dev`'s debian_tools)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import free_ports
from tests.dicom_factory import make_ct_study
from tests.polling import wait_for
from tests.qlinkd.gateways.test_dicom_e2e import KEY_BITS, PULSES, Site, _dataset_bytes, _owned_bits, _run
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
DICOM_PORT, HTTP_PORT = 4242, 8042


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "a network namespace for Orthanc needs root"
    for tool in ("ip", "Orthanc", "storescu"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 orthanc dcmtk)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@dataclass(frozen=True, slots=True)
class Orthanc:
    host: str

    def rest(self, path: str) -> Any:
        response = httpx.get(f"http://{self.host}:{HTTP_PORT}{path}", timeout=10)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.content


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"qlink-{tag}", f"vq{tag}h", f"vq{tag}n"
    subnet = 16 + secrets.randbelow(200)
    host_ip, ns_ip = f"10.177.{subnet}.1", f"10.177.{subnet}.2"
    root = tmp_path_factory.mktemp("orthanc")
    config = root / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "qlink-test-pacs",
                "StorageDirectory": str(root / "storage"),
                "IndexDirectory": str(root / "index"),
                "DicomAet": "ORTHANC",
                "DicomPort": DICOM_PORT,
                "HttpPort": HTTP_PORT,
                "RemoteAccessAllowed": True,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": True,
                "Plugins": [],
            }
        )
    )
    _ip("netns", "add", ns)
    process = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        log = (root / "orthanc.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "Orthanc", str(config)], stdout=log, stderr=log
        )
        server = Orthanc(ns_ip)

        def up() -> bool:
            try:
                return bool(server.rest("/system"))
            except httpx.HTTPError:
                return False

        wait_for(up, "Orthanc's REST API in its namespace")
        yield server
    finally:
        if process is not None:
            process.terminate()
            process.wait(20)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def site(module_testbeds: Testbeds, orthanc: Orthanc) -> Iterator[Site]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    scp_a, scp_b = free_ports(2)
    with deployment.facilities[A].open("a") as f:
        f.write(
            f'\n[gateway.dicom]\nae_title = "QLINK_A"\nlisten = "127.0.0.1:{scp_a}"\n'
            f'[[gateway.dicom.route]]\ncalled_ae = "TO_HOSPITAL_B"\npeer = "{B}"\n'
        )
    with deployment.facilities[B].open("a") as f:
        f.write(
            f'\n[gateway.dicom]\nae_title = "QLINK_B"\nlisten = "127.0.0.1:{scp_b}"\n'
            '[[gateway.dicom.destination]]\nname = "orthanc"\nae_title = "ORTHANC"\n'
            f'address = "{orthanc.host}:{DICOM_PORT}"\n'
        )
    group = module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    yield Site(deployment, group, scp_a, 0)
    for name, child in group.children.items():
        assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"


def test_a_study_arrives_in_orthanc_byte_for_byte(site: Site, orthanc: Orthanc, tmp_path: Path) -> None:
    study = make_ct_study(4, 64, 64, seed=31)
    files = []
    for i, data in enumerate(study):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(data)
        files.append(str(path))
    sent = _run("storescu", "-aet", "CT01", "-aec", "TO_HOSPITAL_B", "127.0.0.1", str(site.scp_port), *files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    row = wait_for(
        lambda: next((r for r in site.ledger() if r["state"] == "delivered"), None),
        "the study delivered to Orthanc",
        timeout=120,
    )
    assert row["destination"] == "orthanc" and row["attempts"] == 1
    ids = orthanc.rest("/instances")
    assert len(ids) == len(study)
    stored = sorted(_dataset_bytes(orthanc.rest(f"/instances/{i}/file")) for i in ids)
    assert stored == sorted(_dataset_bytes(d) for d in study)
