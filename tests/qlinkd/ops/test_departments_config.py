"""`[departments]` in a facility configuration: rules parsed strictly in order, every error naming its
field, and every department a role names checked against what the rules can produce."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlinkmed.qlinkd.access.config import access_section
from qlinkmed.qlinkd.access.departments import Arrival, DepartmentRule, DepartmentRules
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.departments_config import check_role_departments, departments_section
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import read_toml
from tests.examples import EXAMPLES

PEERS = ("hospital-a", "hospital-c")

FULL = """
[departments]
default = "Radiology"

[[departments.rule]]
department = "Cardiology"
peers = ["hospital-a"]
dicom_department = ["CARDIOLOGY", "Cardio"]
modalities = ["US", "XA"]
hl7_receiving_application = ["CARDIO_EHR"]
hl7_service = ["CAR"]
message_types = ["ORU^R01"]

[[departments.rule]]
department = "Laboratory"
hl7_receiving_application = ["LIS"]
"""


def parse(tmp_path: Path, text: str) -> DepartmentRules | None:
    path = tmp_path / "facility.toml"
    path.write_text(text)
    root = read_toml(path)
    access = access_section(root, PEERS)
    departments = departments_section(root, PEERS)
    check_role_departments(access, departments)
    root.finish()
    return departments


def test_no_departments_section_names_no_department(tmp_path: Path) -> None:
    assert parse(tmp_path, "") is None
    # Without [departments] a role's departments are not checked (nothing names one: it sees nothing).
    assert parse(tmp_path, '[[access.role]]\nname = "x"\nkinds = ["study"]\ndepartments = ["ICU"]\n') is None


def test_every_condition_is_read_in_order(tmp_path: Path) -> None:
    assert parse(tmp_path, FULL) == DepartmentRules(
        rules=(
            DepartmentRule(
                department="Cardiology",
                peers=("hospital-a",),
                dicom_departments=("cardiology", "cardio"),
                modalities=("US", "XA"),
                hl7_receiving_applications=("cardio_ehr",),
                hl7_services=("car",),
                message_types=("ORU^R01",),
            ),
            DepartmentRule(department="Laboratory", hl7_receiving_applications=("lis",)),
        ),
        default="Radiology",
    )


def test_a_default_alone_or_rules_alone_are_enough(tmp_path: Path) -> None:
    assert parse(tmp_path, '[departments]\ndefault = "ICU"\n') == DepartmentRules(default="ICU")
    only_rules = parse(tmp_path, '[[departments.rule]]\ndepartment = "ICU"\nhl7_service = ["ICU"]\n')
    assert only_rules is not None and only_rules.default is None and only_rules.names() == ("ICU",)


def test_roles_may_name_any_department_the_rules_or_the_default_produce(tmp_path: Path) -> None:
    roles = """
[[access.role]]
name = "cardiology"
kinds = ["study"]
departments = ["Cardiology", "Radiology"]

[[access.role]]
name = "lab"
kinds = ["ehr"]
departments = ["Laboratory"]
"""
    assert parse(tmp_path, FULL + roles) is not None


MISTAKES = [
    ("[departments]\n", "departments", "names no department"),
    ('[departments]\ndefault = ""\n', "departments.default", "printable"),
    ('[departments]\ndefault = " ICU"\n', "departments.default", "surrounding blanks"),
    ("[departments]\ndefault = 3\n", "departments.default", "must be a string"),
    ('[departments]\ndefault = "x"\ndefualt = "y"\n', "departments.defualt", "unknown key"),
    ("departments = 1\n", "departments", "must be a table"),
    ('[[departments.rule]]\ndepartment = "ICU"\n', "departments.rule[0]", "names no condition"),
    ('[[departments.rule]]\nhl7_service = ["ICU"]\n', "departments.rule[0].department", "missing"),
    (
        '[[departments.rule]]\ndepartment = "' + "D" * 65 + '"\nhl7_service = ["ICU"]\n',
        "departments.rule[0].department",
        "1..64",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\nhl7_service = ["X"]\n'
        '[[departments.rule]]\ndepartment = "B"\nmodalities = ["CT", "us"]\n',
        "departments.rule[1].modalities[1]",
        "not a DICOM modality code",
    ),
    ('[[departments.rule]]\ndepartment = "A"\nmodalities = []\n', "departments.rule[0].modalities", "empty"),
    (
        '[[departments.rule]]\ndepartment = "A"\nmodalities = "CT"\n',
        "departments.rule[0].modalities",
        "array",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\nmodalities = ["CT", 4]\n',
        "departments.rule[0].modalities[1]",
        "must be a string",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\npeers = ["hospital-z"]\n',
        "departments.rule[0].peers[0]",
        "not a configured peer",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\ndicom_department = ["CARDIO", "cardio"]\n',
        "departments.rule[0].dicom_department",
        "twice",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\ndicom_department = ["' + "C" * 65 + '"]\n',
        "departments.rule[0].dicom_department[0]",
        "1..64 printable",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\nhl7_receiving_application = [" "]\n',
        "departments.rule[0].hl7_receiving_application[0]",
        "1..64 printable",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\nhl7_service = ["a\\tb"]\n',
        "departments.rule[0].hl7_service[0]",
        "1..64 printable",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\nmessage_types = ["ORU R01"]\n',
        "departments.rule[0].message_types[0]",
        "not a message type",
    ),
    (
        '[[departments.rule]]\ndepartment = "A"\nhl7_service = ["X"]\nmodality = ["CT"]\n',
        "departments.rule[0].modality",
        "unknown key",
    ),
    (
        FULL + '[[access.role]]\nname = "r"\nkinds = ["study"]\n'
        '[[access.role]]\nname = "c"\nkinds = ["study"]\ndepartments = ["Radiology", "Cardiolgy"]\n',
        "access.role[1].departments[1]",
        "'Cardiolgy' is no department [departments] can name (Cardiology, Laboratory, Radiology)",
    ),
    (
        FULL + '[[access.role]]\nname = "c"\nkinds = ["study"]\ndepartments = ["cardiology"]\n',
        "access.role[0].departments[0]",
        "did you mean 'Cardiology'?",
    ),
]


@pytest.mark.parametrize(("text", "field", "says"), MISTAKES)
def test_every_mistake_names_its_field(tmp_path: Path, text: str, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    assert info.value.field == field, info.value
    assert says in info.value.message


def test_the_shipped_examples_name_departments_and_a_role_limited_to_one(tmp_path: Path) -> None:
    write_demo_pki(tmp_path / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (tmp_path / "psk").mkdir()
    (tmp_path / "psk" / "hospital-a--hospital-b.key").write_bytes(bytes(range(256)) * 4)
    for name in ("hospital-a", "hospital-b"):
        shutil.copy(EXAMPLES / f"{name}.toml", tmp_path / f"{name}.toml")
        config = load_facility_config(tmp_path / f"{name}.toml")
        rules = config.departments
        assert rules is not None and rules.default == "Radiology"
        peer = "hospital-b" if name == "hospital-a" else "hospital-a"
        assert rules.department_of(Arrival(peer=peer, dicom_departments=("Cardiology",))) == "Cardiology"
        assert rules.department_of(Arrival(peer=peer, modalities=("CT", "XA"))) == "Cardiology"
        assert rules.department_of(Arrival(peer=peer, receiving_application="lis")) == "Laboratory"
        assert rules.department_of(Arrival(peer="hospital-z", receiving_application="lis")) == "Radiology"
        assert rules.department_of(Arrival(peer=peer, message_type="ADT^A08")) == "Wards"
        assert rules.department_of(Arrival(peer=peer, modalities=("CT",))) == "Radiology"
        assert config.access.role_map()["cardiology"].departments == ("Cardiology",)
