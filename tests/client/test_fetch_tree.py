"""`qlink inbox fetch` writes a transfer's tree (`client.commands.inbox.write_file`): names are kept as
sent (spaces, "+", non-ASCII), an existing file is never replaced without --overwrite, a symbolic link on
the way is refused, and a name the file system cannot hold becomes file-<index> with its extension."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.client.commands.inbox import FetchError, fallback_name, write_file


@pytest.mark.parametrize(
    "name", ["SE1/IM1", "CT 001.dcm", "a+b.dcm", "Ünïcödé/画像 1.dcm", "deep/er/still/IM 1+2.dcm"]
)
def test_names_are_kept_and_the_tree_rebuilt(tmp_path: Path, name: str) -> None:
    path = write_file(tmp_path, name, b"bytes", overwrite=False)
    assert path == tmp_path / name and path.read_bytes() == b"bytes"
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_existing_file_is_refused_unless_overwrite(tmp_path: Path) -> None:
    write_file(tmp_path, "SE1/IM1", b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_file(tmp_path, "SE1/IM1", b"second", overwrite=False)
    assert (tmp_path / "SE1/IM1").read_bytes() == b"first"
    write_file(tmp_path, "SE1/IM1", b"second", overwrite=True)
    assert (tmp_path / "SE1/IM1").read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "SE1").iterdir()) == ["IM1"]  # no partial file left


def test_a_symbolic_link_on_the_way_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "SE1").symlink_to(outside)
    with pytest.raises(FetchError, match="symbolic link"):
        write_file(root, "SE1/IM1", b"x", overwrite=True)
    assert list(outside.iterdir()) == []


def test_overwrite_replaces_a_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    root = tmp_path / "out"
    root.mkdir()
    (root / "IM1").symlink_to(target)
    with pytest.raises(FileExistsError):
        write_file(root, "IM1", b"new", overwrite=False)
    write_file(root, "IM1", b"new", overwrite=True)
    assert target.read_bytes() == b"keep" and not (root / "IM1").is_symlink()
    assert (root / "IM1").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("SE1/IM 1+2.dcm", "file-00007.dcm"),
        ("scan.png", "file-00007.png"),
        ("IM1", "file-00007"),
        (".hidden", "file-00007"),
        ("x.tar;rm -rf", "file-00007"),
    ],
)
def test_a_fallback_name_keeps_a_plain_extension(name: str, fallback: str) -> None:
    assert fallback_name(7, name) == fallback
