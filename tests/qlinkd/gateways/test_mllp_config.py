"""The facility configuration's [gateway.mllp] table: optional, routes and destinations read, and each
mistake named by its field."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.gateways.mllp_config import DEFAULT_MAX_MESSAGE_BYTES
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from tests.examples import example_without_gateways

GOOD = """
[gateway.mllp]
listen = "127.0.0.1:2575"
idle_timeout_s = 60

[[gateway.mllp.route]]
peer = "hospital-b"
receiving_application = "LAB"

[[gateway.mllp.route]]
peer = "hospital-b"

[[gateway.mllp.destination]]
name = "engine"
address = "127.0.0.1:2576"
ack_timeout_s = 5
"""


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etc-qlink")
    (root / "hospital-a.toml").write_text(example_without_gateways())
    write_demo_pki(root / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (root / "psk").mkdir()
    (root / "psk" / "hospital-a--hospital-b.key").write_bytes(random.Random(7).randbytes(1024))
    return root / "hospital-a.toml"


def _with(example: Path, text: str) -> Path:
    path = example.with_name(f"mllp-{abs(hash(text))}.toml")
    path.write_text(example.read_text() + "\n" + text + "\n")
    return path


def test_absent_means_no_gateway(example: Path) -> None:
    assert load_facility_config(example).gateways.mllp is None


def test_the_table_is_read(example: Path) -> None:
    mllp = load_facility_config(_with(example, GOOD)).gateways.mllp
    assert mllp is not None
    assert mllp.listen is not None and (mllp.listen.host, mllp.listen.port) == ("127.0.0.1", 2575)
    assert mllp.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert mllp.idle_timeout_s == 60.0
    assert [(r.peer, r.receiving_application) for r in mllp.routes] == [
        ("hospital-b", "LAB"),
        ("hospital-b", ""),
    ]
    [dest] = mllp.destinations
    assert (dest.name, dest.address.port, dest.ack_timeout_s) == ("engine", 2576, 5.0)
    assert mllp.route("LAB", "X") is mllp.routes[0]
    assert mllp.route("RAD", "X") is mllp.routes[1]


def test_a_forward_only_facility_needs_no_listener(example: Path) -> None:
    text = '[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "e"\naddress = "127.0.0.1:1"\n'
    mllp = load_facility_config(_with(example, text)).gateways.mllp
    assert mllp is not None and mllp.listen is None and len(mllp.destinations) == 1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[gateway.mllp]\nlisten = "127.0.0.1:2575"\n', "gateway.mllp.route"),
        ("[gateway.mllp]\nmax_message_bytes = 10\n", "gateway.mllp.max_message_bytes"),
        ("[gateway.mllp]\nidle_timeout_s = 0\n", "gateway.mllp.idle_timeout_s"),
        ("[gateway.mllp]\nlisen = 1\n", "gateway.mllp.lisen"),
        ("[gateway.mlp]\n", "gateway.mlp"),
        ('[gateway.mllp]\n[[gateway.mllp.route]]\npeer = "nobody"\n', "gateway.mllp.route[0].peer"),
        (
            '[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "a b"\naddress = "127.0.0.1:1"\n',
            "gateway.mllp.destination[0].name",
        ),
        (
            '[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "e"\naddress = "127.0.0.1"\n',
            "gateway.mllp.destination[0].address",
        ),
        (
            '[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "e"\naddress = "127.0.0.1:1"\n'
            "ack_timeout_s = -1\n",
            "gateway.mllp.destination[0].ack_timeout_s",
        ),
        (
            '[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "e"\naddress = "127.0.0.1:1"\n'
            '[[gateway.mllp.destination]]\nname = "e"\naddress = "127.0.0.1:2"\n',
            "gateway.mllp.destination[1].name",
        ),
    ],
)
def test_a_mistake_names_its_field(example: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_with(example, text))
    assert caught.value.field == field
