"""`qlink testbed init --gateways` and `qlink testbed endpoints`: a testbed with every hospital gateway
enabled at both facilities, each routing to the other and forwarding to a local destination, and every
endpoint printed for scripts. Without the flag the testbed is what it always was: no gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.testbed.deployment import read_deployment
from tests.cli import qlink

A, B = "hospital-a", "hospital-b"


def _init(capsys: pytest.CaptureFixture[str], root: Path, *flags: str) -> dict[str, Any]:
    code, out, err = qlink(capsys, "testbed", "init", str(root), *flags, "--json")
    assert code == 0, err
    found: dict[str, Any] = json.loads(out)
    return found


def test_gateways_are_enabled_at_both_facilities_routing_to_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    found = _init(capsys, root, "--gateways")
    assert set(found["facilities"]) == {A, B}
    for me, other in ((A, B), (B, A)):
        config = load_facility_config(root / f"{me}.toml")
        gateways = config.gateways
        assert gateways.dicom is not None and gateways.mllp is not None and gateways.fhir is not None
        # What arrives at the SCP for the other facility's title goes there, and only that.
        dicom = found["facilities"][me]["dicom"]
        (route,) = dicom["routes"]
        assert route["peer"] == other and gateways.dicom.route(route["called_ae"], "ANY_MODALITY") is not None
        assert gateways.dicom.route(dicom["ae_title"], "ANY_MODALITY") is None
        (pacs,) = dicom["destinations"]
        assert (pacs["name"], pacs["host"]) == ("pacs", "127.0.0.1") and pacs["ae_title"] != dicom["ae_title"]
        mllp = found["facilities"][me]["mllp"]
        assert [r["peer"] for r in mllp["routes"]] == [other] and mllp["listen"]["port"] > 0
        assert [d["name"] for d in mllp["destinations"]] == ["engine"]
        fhir = found["facilities"][me]["fhir"]
        listen = fhir["listen"]
        assert fhir["base_urls"] == {other: f"http://127.0.0.1:{listen['port']}/fhir/{other}"}
        assert fhir["token_file"] == str(root / f"fhir-{me}.token")
        assert found["facilities"][me]["metrics"] == found["facilities"][me]["local_api"] + "/metrics"
    # The PACS, the engine and the FHIR server are each facility's own: B forwards what A sends.
    a_dicom, b_dicom = (found["facilities"][f]["dicom"] for f in (A, B))
    assert a_dicom["destinations"][0]["ae_title"] != b_dicom["destinations"][0]["ae_title"]


def test_every_port_is_distinct_and_read_back_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    found = _init(capsys, root, "--gateways")
    deployment = read_deployment(root)
    names = ("classical", "kme", "local", "data", "dicom", "pacs", "mllp", "engine", "fhir", "fhir_server")
    assert {f"{f}.{n}" for f in (A, B) for n in names} <= set(deployment.ports)
    ports = list(deployment.ports.values())
    assert len(ports) == len(set(ports)), deployment.ports
    a = found["facilities"][A]
    assert deployment.ports[f"{A}.dicom"] == a["dicom"]["scp"]["port"]
    assert deployment.ports[f"{A}.pacs"] == a["dicom"]["destinations"][0]["port"]
    assert deployment.ports[f"{A}.engine"] == a["mllp"]["destinations"][0]["port"]
    assert a["fhir"]["destinations"] == [
        {"base_url": f"http://127.0.0.1:{deployment.ports[A + '.fhir_server']}/fhir"}
    ]
    # `testbed endpoints` reads the same from the files.
    code, out, err = qlink(capsys, "testbed", "endpoints", str(root), "--json")
    assert code == 0, err
    assert json.loads(out) == found


def test_the_text_form_says_how_to_send_to_each_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    code, out, err = qlink(capsys, "testbed", "init", str(root), "--gateways")
    assert code == 0, err
    found = read_deployment(root)
    port = found.ports[f"{A}.dicom"]
    assert f"storescu -aec TO_HOSPITAL_B 127.0.0.1 {port}" in out
    assert f"storescp -aet PACS_HOSPITAL_B {found.ports[B + '.pacs']}" in out
    assert f"mllp_send --loose --port {found.ports[A + '.mllp']}" in out
    assert f"http://127.0.0.1:{found.ports[A + '.fhir']}/fhir/{B}" in out


def test_without_the_flag_the_testbed_has_no_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    found = _init(capsys, root)
    for name in (A, B):
        config = load_facility_config(root / f"{name}.toml")
        assert not config.gateways.any
        assert "[gateway" not in (root / f"{name}.toml").read_text()
        facility = found["facilities"][name]
        assert (facility["dicom"], facility["mllp"], facility["fhir"]) == (None, None, None)
        assert facility["data"] is not None
    code, out, _ = qlink(capsys, "testbed", "init", str(tmp_path / "plain"))
    assert code == 0 and "DICOM SCP" not in out and "qlink testbed run" in out


def test_endpoints_of_a_directory_without_a_testbed_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = qlink(capsys, "testbed", "endpoints", str(tmp_path), "--json")
    assert code == 2 and out == "" and "channel.toml" in err
