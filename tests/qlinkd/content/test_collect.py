"""Directory expansion for `qlink send` (`content.collect_files`) and the sender's content check
(`client.commands.send.check_files`): a CD export's files travel under their paths relative to the folder
given, so repeated names across series stay apart; hidden files, DICOMDIR and non-content files are
skipped with a reason, a symbolic link inside the folder is refused, and a file named directly is never
skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.client.commands.send import check_files
from qlinkmed.qlinkd.content import Found, collect_files
from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, MIB
from qlinkmed.qlinkd.errors import ContentError
from tests.dicom_factory import make_ct_study
from tests.paths import DATA


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_a_cd_export_keeps_relative_names_and_reports_what_it_skips(tmp_path: Path) -> None:
    slices = make_ct_study(3, 8, 8, seed=2)
    _write(
        tmp_path,
        {
            "SE1/IM1": slices[0],
            "SE1/IM2": slices[1],
            "SE2/IM1": slices[2],
            "DICOMDIR": b"index",
            "README.txt": b"Insert the disc.\n",
            ".hidden": b"x",
            ".Trash/IM9": b"x",
        },
    )
    found, skipped = collect_files([tmp_path])
    assert [(f.name, f.in_folder) for f in found] == [
        ("README.txt", True),
        ("SE1/IM1", True),
        ("SE1/IM2", True),
        ("SE2/IM1", True),
    ]
    assert {(p.path.name, p.reason) for p in skipped} == {
        (".Trash", "hidden folder"),
        (".hidden", "hidden file"),
        ("DICOMDIR", "DICOMDIR index (the files it lists are sent from the folder)"),
    }
    checked, not_content = check_files(found, DEFAULT_LIMITS)
    assert [f.name for f, _ in checked] == ["SE1/IM1", "SE1/IM2", "SE2/IM1"]
    assert [(s.path.name, s.reason) for s in not_content] == [("README.txt", "not DICOM, PNG or JPEG")]


def test_a_large_viewer_binary_in_the_folder_is_skipped_without_being_read(tmp_path: Path) -> None:
    viewer = tmp_path / "VIEWER" / "viewer.exe"
    viewer.parent.mkdir()
    with viewer.open("wb") as handle:  # over the EHR limit anything that is not binary content is held to
        handle.write(b"MZ\x90\x00")
        handle.truncate(DEFAULT_LIMITS.max_ehr_bytes + MIB)
    (tmp_path / "msg.hl7").write_bytes((DATA / "oru_r01.hl7").read_bytes())
    (tmp_path / "IM1").write_bytes(make_ct_study(1, 8, 8, seed=3)[0])
    checked, skipped = check_files(collect_files([tmp_path])[0], DEFAULT_LIMITS)
    assert [f.name for f, _ in checked] == ["IM1"]
    assert {(s.path.name, s.reason) for s in skipped} == {
        ("viewer.exe", "not DICOM, PNG or JPEG"),
        ("msg.hl7", "an EHR message (send it with `qlink ehr send`)"),
    }


def test_a_file_named_directly_is_never_skipped(tmp_path: Path) -> None:
    readme = tmp_path / "README.txt"
    readme.write_bytes(b"notes\n")
    found, skipped = collect_files([readme])
    assert (found, skipped) == ([Found(readme, "README.txt", in_folder=False)], [])
    with pytest.raises(ContentError, match="not DICOM"):
        check_files(found, DEFAULT_LIMITS)


def test_a_corrupt_dicom_file_in_a_folder_is_fatal_not_skipped(tmp_path: Path) -> None:
    whole = make_ct_study(1, 16, 16, seed=4)[0]
    _write(tmp_path, {"SE1/IM1": whole[: len(whole) // 2], "SE1/IM2": whole})
    with pytest.raises(ContentError) as caught:
        check_files(collect_files([tmp_path])[0], DEFAULT_LIMITS)
    assert caught.value.name == "SE1/IM1" and "truncated" in caught.value.problem


@pytest.mark.parametrize("target", ["file", "folder"])
def test_a_symbolic_link_inside_the_folder_is_refused(tmp_path: Path, target: str) -> None:
    root, outside = tmp_path / "cd", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x")
    link = root / "IM1"
    link.symlink_to(outside / "secret.dcm" if target == "file" else outside)
    with pytest.raises(ContentError) as caught:
        collect_files([root])
    assert caught.value.name == str(link)
    assert caught.value.problem.startswith("symbolic link inside the folder: refused")


def test_a_name_that_cannot_travel_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "IM\x1b1"
    bad.write_bytes(make_ct_study(1, 8, 8, seed=5)[0])
    with pytest.raises(ContentError) as caught:
        check_files(collect_files([tmp_path])[0], DEFAULT_LIMITS)
    assert caught.value.name == str(bad) and "U+001B" in caught.value.problem


def test_two_exports_with_the_same_names_are_kept_apart(tmp_path: Path) -> None:
    first, second = make_ct_study(1, 8, 8, seed=7), make_ct_study(1, 8, 8, seed=8)
    _write(tmp_path / "cd1", {"SE1/IM1": first[0]})
    _write(tmp_path / "cd2", {"SE1/IM1": second[0]})
    found, _ = collect_files([tmp_path / "cd1", tmp_path / "cd2"])
    checked, _ = check_files(found, DEFAULT_LIMITS)
    assert [(f.name, f.path.parent.parent.name) for f, _ in checked] == [
        ("SE1/IM1", "cd1"),
        ("SE1/IM1", "cd2"),
    ]
    assert checked[0][1].study_uid != checked[1][1].study_uid  # two studies: two transfers, no clash
