"""`[access]` in a facility configuration: roles parsed strictly, every error naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.qlinkd.access.config import AccessConfig, PatientScope, Role, access_section
from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.toml_reader import read_toml

PEERS = ("hospital-a",)


def parse(tmp_path: Path, text: str) -> AccessConfig:
    path = tmp_path / "facility.toml"
    path.write_text(text)
    root = read_toml(path)
    config = access_section(root, PEERS)
    root.finish()
    return config


def test_no_access_section_means_no_roles_and_the_default_limits(tmp_path: Path) -> None:
    assert parse(tmp_path, "") == AccessConfig()


def test_a_role_with_every_dimension(tmp_path: Path) -> None:
    config = parse(
        tmp_path,
        """
[access]
break_glass_default_s = 600
break_glass_min_s = 1

[[access.role]]
name = "radiology"
kinds = ["study", "images"]
peers = ["hospital-a"]
modalities = ["CT", "MR"]
message_types = ["ORU^R01"]
departments = ["radiology"]
patients = "assigned"
""",
    )
    assert config.break_glass_default_s == 600.0 and config.break_glass_min_s == 1.0
    assert config.role_map() == {
        "radiology": Role(
            name="radiology",
            kinds=(TransferKind.STUDY, TransferKind.IMAGES),
            peers=("hospital-a",),
            modalities=("CT", "MR"),
            message_types=("ORU^R01",),
            departments=("radiology",),
            patients=PatientScope.ASSIGNED,
        )
    }


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ('[[access.role]]\nname = "r"\n', "access.role[0].kinds", "required field is missing"),
        ('[[access.role]]\nname = "r"\nkinds = []\n', "access.role[0].kinds", "at least one"),
        ('[[access.role]]\nname = "r"\nkinds = ["pdf"]\n', "access.role[0].kinds[0]", "must be one of"),
        ('[[access.role]]\nname = "R x"\nkinds = ["ehr"]\n', "access.role[0].name", "must match"),
        (
            '[[access.role]]\nname = "r"\nkinds = ["ehr"]\npeers = ["hospital-z"]\n',
            "access.role[0].peers[0]",
            "not a configured peer",
        ),
        (
            '[[access.role]]\nname = "r"\nkinds = ["study"]\nmodalities = ["ct scan"]\n',
            "access.role[0].modalities[0]",
            "not a DICOM modality",
        ),
        (
            '[[access.role]]\nname = "r"\nkinds = ["study"]\npatients = "some"\n',
            "access.role[0].patients",
            "must be one of any | assigned",
        ),
        (
            '[[access.role]]\nname = "r"\nkinds = ["study"]\ncolour = 1\n',
            "access.role[0].colour",
            "unknown key",
        ),
        (
            '[[access.role]]\nname = "r"\nkinds = ["study"]\n[[access.role]]\nname = "r"\nkinds = ["ehr"]\n',
            "access.role[1].name",
            "defined twice",
        ),
        ("[access]\nbreak_glass_default_s = 30\n", "access.break_glass_default_s", "must lie between"),
        ("[access]\nbreak_glass_min_s = 0\n", "access.break_glass_min_s", "at least 1 s"),
        ("[access]\nbreak_glass_max_s = 1e9\n", "access.break_glass_max_s", "at most a week"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, text)
    assert caught.value.field == field
    assert message in str(caught.value)
