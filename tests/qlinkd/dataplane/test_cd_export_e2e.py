"""A CD-style export through two facility daemons: `qlink send` of the export's folder at hospital-a,
`qlink inbox fetch` at hospital-b, and the tree comes back intact and bit-exact.

The export: two series whose files repeat names (SE1/IM1, SE2/IM1), a DICOMDIR, a README.txt, an
AUTORUN.INF, a viewer "executable", a hidden file, a slice written as a bare data set (no preamble), a
structured report without a StudyInstanceUID and files whose names hold spaces, "+" and non-ASCII. The
non-content files are skipped and reported one line each; the DICOM objects travel as two transfers (the
study, and the report grouped by PatientID and folder) under their relative names, and dcmdump (dcmtk, an
independent reader) reads each one as it arrived. A folder holding only hidden files is an error with
exit status 2. The channel service and both daemons are real processes on loopback (tests/testbeds.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.readers import reader_token_file
from tests.cli import qlink
from tests.dicom_factory import make_ct_study
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 32_000
PYDICOM_DATA = Path(get_testdata_file("CT_small.dcm", download=False) or "").parent


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def deployment(module_testbeds: Testbeds) -> Iterator[Deployment]:
    group = module_testbeds.launch(pulses_per_round=PULSES)
    deployment = group.deployment
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    yield deployment
    for name, child in group.children.items():
        assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"


def _report_without_study() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "QLT-CD"
    ds.ValueType = "CONTAINER"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bare_slice(data: bytes) -> bytes:
    """A CT slice as an old modality writes it: the data set alone, implicit VR, no preamble or meta."""
    ds = Dataset()
    ds.update(pydicom.dcmread(io.BytesIO(data)))
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def _cd_export(root: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """Write the export; (what must arrive, by relative name; what must be skipped, name -> reason)."""
    slices = make_ct_study(6, 32, 32, seed=21)
    bare = _bare_slice(slices.pop())
    second = [pydicom.dcmread(io.BytesIO(s)) for s in slices[3:]]
    series = generate_uid()
    for ds in second:  # a second series of the same study
        ds.SeriesInstanceUID = series
    slices[3:] = []
    for ds in second:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        slices.append(buffer.getvalue())
    content = {
        "SE1/IM1": slices[0],
        "SE1/IM2": slices[1],
        "SE1/IM3": slices[2],
        "SE2/IM1": slices[3],
        "SE2/IM2": slices[4],
        "SE2/IM3": bare,
        "SR/report 1+final é.dcm": _report_without_study(),
    }
    skipped = {
        "DICOMDIR": "DICOMDIR index",
        "README.txt": "not DICOM, PNG or JPEG",
        "AUTORUN.INF": "not DICOM, PNG or JPEG",
        "VIEWER/viewer.exe": "not DICOM, PNG or JPEG",
        ".DS_Store": "hidden file",
    }
    for name, data in content.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "DICOMDIR").write_bytes((PYDICOM_DATA / "dicomdirtests" / "DICOMDIR").read_bytes())
    (root / "README.txt").write_text("Open VIEWER/viewer.exe to view the images.\n")
    (root / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\viewer.exe\n")
    (root / "VIEWER").mkdir()
    (root / "VIEWER/viewer.exe").write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 40)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return content, skipped


def _reading(deployment: Deployment) -> tuple[str, ...]:
    """`qlink inbox` flags for B's all-data reader (the facility token sends only)."""
    return (
        "--user-token-file",
        str(reader_token_file(deployment, B)),
        "--config",
        str(deployment.facilities[B]),
    )


def test_a_cd_export_arrives_with_its_tree_intact_and_bit_exact(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cd = tmp_path / "cd"
    cd.mkdir()
    content, skipped = _cd_export(cd)
    config_a = str(deployment.facilities[A])
    code, out, err = qlink(capsys, "send", "--to", B, str(cd), "--json", "--config", config_a)
    assert code == 0, err
    for name, reason in skipped.items():
        assert f"qlink send: skipped {cd / name}: {reason}" in err, (name, err)
    assert f"qlink send: {len(skipped)} file(s) skipped, {len(content)} to send" in err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["state"] for r in results] == ["delivered", "delivered"]
    study, report = results
    assert (study["files"], report["files"]) == (6, 1)
    assert "grouped by PatientID in folder 'SR'" in report["grouped_as"]

    fetched: dict[str, bytes] = {}
    out_dir = tmp_path / "fetched"
    for result in results:
        tid = result["transfer_id"]
        code, out, err = qlink(
            capsys, "inbox", "fetch", tid, "--out", str(out_dir), "--json", *_reading(deployment)
        )
        assert code == 0, err
        for f in json.loads(out)["files"]:
            path = Path(f["path"])
            assert f["name"] == f["sent_as"] and path == out_dir / tid / f["name"]
            fetched[f["name"]] = path.read_bytes()
        # The tree on disk is exactly the names sent, nothing more.
        on_disk = {p.relative_to(out_dir / tid).as_posix() for p in (out_dir / tid).rglob("*") if p.is_file()}
        assert on_disk == {f["name"] for f in json.loads(out)["files"]}
    assert fetched.keys() == content.keys()
    assert all(hashlib.sha256(fetched[n]).digest() == hashlib.sha256(content[n]).digest() for n in content)
    assert fetched == content
    dcmdump = shutil.which("dcmdump")
    if dcmdump is not None:  # an independent reader takes every object as it arrived
        for name in content:
            path = out_dir / (study if name.startswith("SE") else report)["transfer_id"] / name
            assert (
                subprocess.run([dcmdump, "-q", str(path)], check=False, capture_output=True).returncode == 0
            )

    # Fetching again is refused without --overwrite, and rewrites the same tree with it.
    tid = study["transfer_id"]
    code, out, err = qlink(capsys, "inbox", "fetch", tid, "--out", str(out_dir), *_reading(deployment))
    assert code == 1 and "refusing to overwrite (--overwrite replaces its files)" in err
    (out_dir / tid / "SE2" / "IM1").write_bytes(b"changed locally")
    code, out, err = qlink(
        capsys, "inbox", "fetch", tid, "--out", str(out_dir), "--overwrite", *_reading(deployment)
    )
    assert code == 0, err
    assert (out_dir / tid / "SE2" / "IM1").read_bytes() == content["SE2/IM1"]


def test_a_folder_with_nothing_to_send_exits_2_and_says_why(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hidden-only"
    folder.mkdir()
    (folder / ".a.dcm").write_bytes(make_ct_study(1, 8, 8)[0])
    (folder / ".cache").mkdir()
    (folder / ".cache" / "b.dcm").write_bytes(b"x")
    code, out, err = qlink(capsys, "send", "--to", B, str(folder), "--config", str(deployment.facilities[A]))
    assert code == 2 and out == ""
    assert f"qlink send: skipped {folder / '.a.dcm'}: hidden file" in err
    assert f"qlink send: skipped {folder / '.cache'}: hidden folder" in err
    assert (
        f"qlink send: error: nothing to send in {folder}: no DICOM, PNG or JPEG file (2 file(s) skipped)"
        in err
    )


def test_a_symbolic_link_inside_the_folder_is_refused_and_nothing_is_sent(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "IM1").write_bytes(make_ct_study(1, 8, 8, seed=3)[0])
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(make_ct_study(1, 8, 8, seed=4)[0])
    (folder / "IM2").symlink_to(outside)
    code, out, err = qlink(capsys, "send", "--to", B, str(folder), "--config", str(deployment.facilities[A]))
    assert code == 1 and out == ""
    assert f"qlink send: {folder / 'IM2'}: symbolic link inside the folder" in err


def test_two_exports_repeating_names_go_as_two_studies_and_one_study_split_is_refused(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(deployment.facilities[A])
    for folder, seed in (("cd1", 31), ("cd2", 32)):
        (tmp_path / folder / "SE1").mkdir(parents=True)
        (tmp_path / folder / "SE1" / "IM1").write_bytes(make_ct_study(1, 8, 8, seed=seed)[0])
    code, out, err = qlink(
        capsys, "send", "--to", B, str(tmp_path / "cd1"), str(tmp_path / "cd2"), "--json", "--config", config
    )
    assert code == 0, err
    assert [(r["state"], r["files"]) for r in map(json.loads, out.splitlines())] == [("delivered", 1)] * 2

    halves = make_ct_study(2, 8, 8, seed=33)  # one study, its two slices in two folders under one name
    for folder, data in (("half1", halves[0]), ("half2", halves[1])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "IM1").write_bytes(data)
    code, out, err = qlink(
        capsys, "send", "--to", B, str(tmp_path / "half1"), str(tmp_path / "half2"), "--config", config
    )
    assert code == 1 and out == ""
    assert f"qlink send: {tmp_path / 'half2' / 'IM1'}: name 'IM1' appears twice; send them separately" in err
