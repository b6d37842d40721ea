"""The DICOM gateway's pure parts: its configuration table (every mistake named by its field), the
grouping of acknowledged instances into study transfers, and the forwarding verdict from the PACS's
statuses."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.gateways.dicom_forward import InstanceResult, verdict_of
from qlinkmed.qlinkd.gateways.dicom_groups import Grouping, StagedInstance
from qlinkmed.qlinkd.gateways.forwarder import Verdict
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from tests.examples import example_without_gateways

GATEWAY = """
[gateway.dicom]
ae_title = "QLINK_A"
listen = "127.0.0.1:11112"
quiet_s = 5

[[gateway.dicom.route]]
called_ae = "TO_B"
peer = "hospital-b"

[[gateway.dicom.route]]
called_ae = "TO_B_CT"
calling_ae = "CT01"
peer = "hospital-b"

[[gateway.dicom.destination]]
name = "pacs"
ae_title = "PACS"
address = "10.0.0.5:104"
tls = true
"""


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etc-qlink")
    (root / "hospital-a.toml").write_text(example_without_gateways())
    write_demo_pki(root / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (root / "psk").mkdir()
    (root / "psk" / "hospital-a--hospital-b.key").write_bytes(random.Random(7).randbytes(1024))
    text = (root / "hospital-a.toml").read_text()
    # The example's own data_address (a commented line) is replaced by one the tests below can remove.
    text = re.sub(r"^data_address = .*\n", "", text, flags=re.MULTILINE)
    text = text.replace('id = "hospital-b"', 'id = "hospital-b"\ndata_address = "127.0.0.1:7003"', 1)
    (root / "hospital-a.toml").write_text(text)
    return root / "hospital-a.toml"


def _with(example: Path, text: str) -> Path:
    path = example.with_name(f"dicom-{abs(hash(text))}.toml")
    path.write_text(example.read_text() + text)
    return path


def test_no_table_no_gateway(example: Path) -> None:
    assert load_facility_config(example).gateways.dicom is None


def test_the_table_is_read(example: Path) -> None:
    dicom = load_facility_config(_with(example, GATEWAY)).gateways.dicom
    assert dicom is not None
    assert (dicom.ae_title, dicom.listen.port, dicom.quiet_s) == ("QLINK_A", 11112, 5.0)
    assert [d.name for d in dicom.destinations] == ["pacs"]
    assert dicom.destinations[0].address.host == "10.0.0.5"
    assert dicom.destinations[0].tls and not dicom.tls
    assert dicom.route("TO_B", "ANY").peer == "hospital-b"  # type: ignore[union-attr]
    assert dicom.route("TO_B_CT", "CT01") is not None
    assert dicom.route("TO_B_CT", "CT02") is None
    assert dicom.route("ELSEWHERE", "CT01") is None


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('ae_title = "QLINK_A"', 'ae_title = "A\\\\B"', "gateway.dicom.ae_title"),
        ('ae_title = "QLINK_A"', 'ae_title = "SEVENTEEN_CHARS_X"', "gateway.dicom.ae_title"),
        ("quiet_s = 5", "quiet_s = 0", "gateway.dicom.quiet_s"),
        ("quiet_s = 5", "staging_max_bytes = 10", "gateway.dicom.staging_max_bytes"),
        ("quiet_s = 5", "quiet = 5", "gateway.dicom.quiet"),
        (
            'peer = "hospital-b"\n\n[[gateway.dicom.route]]',
            'peer = "hospital-c"\n\n[[gateway.dicom.route]]',
            "gateway.dicom.route[0].peer",
        ),
        ('called_ae = "TO_B"\n', 'called_ae = " TO_B"\n', "gateway.dicom.route[0].called_ae"),
        ('address = "10.0.0.5:104"', 'address = "10.0.0.5:0"', "gateway.dicom.destination[0].address"),
        ('name = "pacs"', 'name = "../pacs"', "gateway.dicom.destination[0].name"),
        ("tls = true", 'tls = "yes"', "gateway.dicom.destination[0].tls"),
    ],
)
def test_a_mistake_names_its_field(example: Path, old: str, new: str, field: str) -> None:
    assert old in GATEWAY
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_with(example, GATEWAY.replace(old, new, 1)))
    assert caught.value.field == field, caught.value


def test_a_destination_named_twice_is_refused(example: Path) -> None:
    twice = GATEWAY + '\n[[gateway.dicom.destination]]\nname = "pacs"\nae_title = "P2"\naddress = "h:1"\n'
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_with(example, twice))
    assert caught.value.field == "gateway.dicom.destination[1].name"


def test_a_route_to_a_peer_without_data_address_is_refused(example: Path) -> None:
    text = example.read_text().replace('data_address = "127.0.0.1:7003"\n', "")
    path = example.with_name("no-data.toml")
    path.write_text(text + GATEWAY)
    with pytest.raises(ConfigError) as caught:
        load_facility_config(path)
    assert caught.value.field == "gateway.dicom.route[0].peer"
    assert "data_address" in caught.value.message


def _instance(name: str, study: str | None, size: int = 10) -> StagedInstance:
    return StagedInstance(path=Path(f"/s/{name}"), name=name, size=size, sha256="0" * 64, study_uid=study)


def test_groups_are_per_association_and_study_and_end_with_the_association() -> None:
    g = Grouping()
    g.add("a1", "hospital-b", _instance("1.dcm", "S1"), now=0)
    g.add("a1", "hospital-b", _instance("2.dcm", "S2"), now=0)
    g.add("a1", "hospital-b", _instance("3.dcm", None), now=0)
    g.add("a2", "hospital-b", _instance("4.dcm", "S1"), now=0)
    ended = g.end_association("a1")
    assert sorted((grp.study_uid or "", list(grp.instances)) for grp in ended) == [
        ("", ["3.dcm"]),
        ("S1", ["1.dcm"]),
        ("S2", ["2.dcm"]),
    ]
    assert g.open_groups() == 1
    assert g.end_association("a1") == []


def test_a_resent_instance_replaces_the_earlier_one() -> None:
    g = Grouping()
    first = _instance("1.dcm", "S1", size=10)
    assert g.add("a1", "p", first, now=0) is None
    assert g.add("a1", "p", _instance("1.dcm", "S1", size=12), now=1) == first
    [group] = g.end_association("a1")
    assert group.size == 12 and len(group.instances) == 1


def test_a_quiet_group_is_due_and_a_busy_one_is_not() -> None:
    g = Grouping()
    g.add("a1", "p", _instance("1.dcm", "S1"), now=0)
    g.add("a1", "p", _instance("2.dcm", "S2"), now=0)
    g.add("a1", "p", _instance("3.dcm", "S2"), now=8)
    assert g.next_due(10) == 10
    assert g.quiet(now=9.9, quiet_s=10) == []
    [due] = g.quiet(now=10, quiet_s=10)
    assert due.study_uid == "S1"
    assert g.next_due(10) == 18


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        ([0x0000, 0x0000], Verdict.DELIVERED),
        ([0x0000, 0xB007], Verdict.DELIVERED),  # stored with coercion: a warning, still delivered
        ([0x0000, 0xA700], Verdict.RETRY),  # out of resources: transient
        ([0xA702, 0xA900], Verdict.RETRY),  # one transient failure: the whole study again
        ([0x0000, 0xA900], Verdict.PARK),  # data set does not match SOP class: for good
        ([0xC000], Verdict.PARK),
        ([0x0122], Verdict.PARK),  # SOP class not supported
        ([0x0000, None], Verdict.RETRY),  # no answer: timeout or association lost
    ],
)
def test_verdict_from_statuses(statuses: list[int | None], verdict: Verdict) -> None:
    results = [InstanceResult(i, s, "x") for i, s in enumerate(statuses)]
    assert verdict_of(results, associated=True).verdict is verdict


def test_verdict_no_association_retries_and_an_unsendable_instance_parks() -> None:
    assert verdict_of((), associated=False, why="refused").verdict is Verdict.RETRY
    unsendable = InstanceResult(0, None, "no presentation context accepted", unsendable=True)
    attempt = verdict_of([unsendable], associated=True)
    assert attempt.verdict is Verdict.PARK and "no presentation context" in attempt.detail
