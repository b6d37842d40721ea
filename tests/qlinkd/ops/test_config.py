"""Facility and channel-service configuration: the shipped examples load, and every mistake names its
field."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from qlinkmed.qcore.channel import EveKind
from qlinkmed.qcore.params import E91Security, ProtocolKind
from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.errors import ConfigError, FrameError
from qlinkmed.qlinkd.link.messages import Hello
from qlinkmed.qlinkd.ops.config import DEFAULT_PULSES_PER_ROUND, Backend, check_config, load_facility_config
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address, parse_address
from tests.paths import REPO

EXAMPLES = REPO / "systemd" / "examples"
PSK = "psk/hospital-a--hospital-b.key"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples next to the files they reference, as `qlink ca init` and an operator would make them."""
    root = tmp_path_factory.mktemp("etc-qlink")
    for example in EXAMPLES.glob("*.toml"):
        shutil.copy(example, root / example.name)
    write_demo_pki(root / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (root / "psk").mkdir()
    (root / PSK).write_bytes(random.Random(7).randbytes(1024))
    (root / "psk" / "short.key").write_bytes(bytes(100))
    return root


def _variant(deployment: Path, name: str, old: str, new: str) -> Path:
    text = (deployment / name).read_text()
    assert text.count(old) == 1, f"test setup: {old!r} must occur once in {name}"
    path = deployment / f"variant-{abs(hash((name, old, new)))}.toml"
    path.write_text(text.replace(old, new))
    return path


def test_examples_load(deployment: Path) -> None:
    a = load_facility_config(deployment / "hospital-a.toml")
    b = load_facility_config(deployment / "hospital-b.toml")
    channel = load_channel_config(deployment / "channel.toml")

    assert a.id == "hospital-a" and a.saes == ("pacs-a", "ehr-a")
    assert a.listen.kme == Address(host="127.0.0.1", port=7102)
    assert a.channel == Address(host="127.0.0.1", port=7100)
    assert a.kme.key_size == 256 and b.kme.max_key_per_request == 128
    peer = a.peer("hospital-b")
    assert peer.address == b.listen.classical
    assert peer.protocol is ProtocolKind.BB84 and peer.pulses_per_round == 20_000_000
    assert peer.preshared == b.peer("hospital-a").preshared == (deployment / PSK).read_bytes()
    assert peer.distill_config().qber_tolerance == 0.11
    with pytest.raises(KeyError):
        a.peer("hospital-z")

    assert channel.backend is Backend.NUMPY
    assert channel.fiber.distance_km == 10.0 and channel.fiber.detector_efficiency == 0.1
    assert channel.eve.kind is EveKind.NONE and not channel.eve.active


def test_e91_security_is_a_per_peer_option(deployment: Path) -> None:
    peer = load_facility_config(deployment / "hospital-a.toml").peer("hospital-b")
    assert peer.distill_config().e91_security is E91Security.BBM92
    path = _variant(
        deployment,
        "hospital-a.toml",
        'protocol = "bb84"',
        'protocol = "e91"\ne91_security = "device-independent"',
    )
    peer = load_facility_config(path).peer("hospital-b")
    assert peer.protocol is ProtocolKind.E91
    assert peer.distill_config().e91_security is E91Security.DEVICE_INDEPENDENT


def test_key_expiry_defaults_to_a_day_and_takes_seconds(deployment: Path) -> None:
    # hospital-b's example omits [kme]; hospital-a's writes the defaults out.
    assert load_facility_config(deployment / "hospital-b.toml").kme.key_expiry_s == 86_400.0
    path = _variant(deployment, "hospital-a.toml", "key_expiry_s = 86400", "key_expiry_s = 3600")
    assert load_facility_config(path).kme.key_expiry_s == 3600.0
    with pytest.raises(ConfigError) as info:
        load_facility_config(
            _variant(deployment, "hospital-a.toml", "key_expiry_s = 86400", "key_expiry_s = 0")
        )
    assert info.value.field == "kme.key_expiry_s" and "seconds" in info.value.message


def test_relative_paths_resolve_against_the_config_directory(deployment: Path) -> None:
    config = load_facility_config(deployment / "hospital-a.toml")
    assert config.tls.ca == (deployment / "pki" / "ca.pem").resolve()
    assert config.state_dir == (deployment / "state" / "hospital-a").resolve()
    assert not config.state_dir.exists()  # loading has no side effects
    assert config.peers[0].preshared_key_path == (deployment / PSK).resolve()


def test_preshared_key_is_hidden_from_repr(deployment: Path) -> None:
    config = load_facility_config(deployment / "hospital-a.toml")
    psk = config.peers[0].preshared
    text = repr(config)
    assert "preshared=" not in text
    assert psk.hex()[:16] not in text and repr(psk)[:20] not in text


FACILITY_MISTAKES = [
    # (old, new, expected field)
    ('id = "hospital-a"                     #', "#", "facility.id"),
    ('id = "hospital-a"', 'id = "Hospital_A"', "facility.id"),
    ('saes = ["pacs-a", "ehr-a"]', 'saes = "pacs-a"', "facility.saes"),
    ('saes = ["pacs-a", "ehr-a"]', 'saes = ["pacs-a", 3]', "facility.saes[1]"),
    ('saes = ["pacs-a", "ehr-a"]', 'saes = ["pacs-a", "pacs-a"]', "facility.saes[1]"),
    ('saes = ["pacs-b"]', 'saes = ["pacs-a"]', "peer[0].saes[0]"),
    ('state_dir = "state/hospital-a"', 'state_dir = "state/hospital-a"\nsaez = []', "facility.saez"),
    ("[kme]", "[kmee]", "kmee"),
    ('\nkey = "pki/hospital-a.key"', '\nkey = "pki/missing.key"', "tls.key"),
    (
        '\ncert = "pki/hospital-a.pem"',
        '\ncert = "pki/hospital-b.pem"',
        "tls.cert",
    ),  # key does not match the certificate
    ('local = "127.0.0.1:7103"', 'local = "10.0.0.1:7103"', "listen.local"),
    ('kme = "127.0.0.1:7102"', 'kme = "127.0.0.1"', "listen.kme"),
    ('kme = "127.0.0.1:7102"', 'kme = "127.0.0.1:70000"', "listen.kme"),
    ('kme = "127.0.0.1:7102"', 'kme = "::1:7102"', "listen.kme"),
    ('kme = "127.0.0.1:7102"', 'kme = "bad host!:7102"', "listen.kme"),
    ('address = "127.0.0.1:7100"', "address = 7100", "channel.address"),
    ("[listen]\n", "[listening]\n", "listen"),
    ("key_size = 256", "key_size = 100", "kme.key_size"),
    ("min_key_size = 64", "min_key_size = 8192", "kme.min_key_size"),
    ("max_key_per_request = 128", "max_key_per_request = true", "kme.max_key_per_request"),
    ("key_expiry_s = 86400", "key_expiry_s = 0", "kme.key_expiry_s"),
    ("key_expiry_s = 86400", "key_expiry_s = -60", "kme.key_expiry_s"),
    ("key_expiry_s = 86400", "key_expiry_s = 0.5", "kme.key_expiry_s"),
    ("key_expiry_s = 86400", 'key_expiry_s = "24h"', "kme.key_expiry_s"),
    ("key_expiry_s = 86400", "key_expiry_s = nan", "kme.key_expiry_s"),
    ("key_expiry_s = 86400", "key_expiry_s = 1e12", "kme.key_expiry_s"),
    ("max_key_per_request = 128", "max_key_per_request = 128\nkey_expiry = 3600", "kme.key_expiry"),
    ('id = "hospital-b"', 'id = "hospital-a"', "peer[0].id"),
    ('address = "127.0.0.1:7201"', 'address = "127.0.0.1"', "peer[0].address"),
    ('"psk/hospital-a--hospital-b.key"', '"psk/absent.key"', "peer[0].preshared_key"),
    ('"psk/hospital-a--hospital-b.key"', '"psk/short.key"', "peer[0].preshared_key"),
    ('protocol = "bb84"', 'protocol = "b92"', "peer[0].protocol"),
    ('protocol = "bb84"', 'protocol = "e91"\ne91_security = "di"', "peer[0].e91_security"),
    ("pulses_per_round = 20000000", 'pulses_per_round = "many"', "peer[0].pulses_per_round"),
    ("pulses_per_round = 20000000", "pulses_per_round = 100", "peer[0].pulses_per_round"),
    ("pulses_per_round = 20000000", "pulses_per_round = 1e6", "peer[0].pulses_per_round"),
    ("high_watermark_bits = 8000000", "high_watermark_bits = 1000", "peer[0].high_watermark_bits"),
    ("low_watermark_bits = 2000000", "low_watermark_bits = -1", "peer[0].low_watermark_bits"),
    ("round_timeout_s = 10.0", "round_timeout_s = 0", "peer[0].round_timeout_s"),
    ("qber_tolerance = 0.11", "qber_tolerance = 0.5", "peer[0].qber_tolerance"),
    ("qber_tolerance = 0.11", "qber_tolerence = 0.11", "peer[0].qber_tolerence"),
    ("sample_fraction = 0.3", "sample_fraction = 1.0", "peer[0].sample_fraction"),
    ("sample_fraction = 0.3", "sample_fraction = 0.3\n[[peer]]", "peer[1].id"),
    ("eps_sec = 1e-10", "eps_sec = 0", "peer[0].eps_sec"),
    ("eps_sec = 1e-10", "eps_sec = 1.0", "peer[0].eps_sec"),
    ("eps_sec = 1e-10", "eps_sec = -1e-10", "peer[0].eps_sec"),
    ("eps_sec = 1e-10", 'eps_sec = "1e-10"', "peer[0].eps_sec"),
    ("eps_sec = 1e-10", "eps_sec = nan", "peer[0].eps_sec"),
    ("eps_cor = 1e-10", "eps_cor = 0.0", "peer[0].eps_cor"),
    ("eps_cor = 1e-10", "eps_cor = 2", "peer[0].eps_cor"),
    ("eps_cor = 1e-10", "eps_cor = true", "peer[0].eps_cor"),
]


@pytest.mark.parametrize(("old", "new", "field"), FACILITY_MISTAKES)
def test_facility_mistakes_name_the_field(deployment: Path, old: str, new: str, field: str) -> None:
    path = _variant(deployment, "hospital-a.toml", old, new)
    with pytest.raises(ConfigError) as info:
        load_facility_config(path)
    assert info.value.field == field, info.value
    assert str(info.value) == f"config field '{field}': {info.value.message}"


def test_eps_out_of_range_says_the_range(deployment: Path) -> None:
    path = _variant(deployment, "hospital-a.toml", "eps_cor = 1e-10", "eps_cor = 0")
    with pytest.raises(ConfigError, match=r"config field 'peer\[0\]\.eps_cor': must be in \(0, 1\)"):
        load_facility_config(path)


def test_security_parameters_reach_the_round_policy(deployment: Path) -> None:
    # Defaults where a peer says nothing (hospital-b's example), the deployer's choice where it does.
    default = load_facility_config(deployment / "hospital-b.toml").peer("hospital-a").distill_config()
    assert (default.eps_sec, default.eps_cor, default.eps, default.verification_bits) == (
        1e-10,
        1e-10,
        2e-10,
        34,
    )
    text = _variant(deployment, "hospital-a.toml", "eps_sec = 1e-10", "eps_sec = 1e-9").read_text()
    path = deployment / "eps-variant.toml"
    path.write_text(text.replace("eps_cor = 1e-10", "eps_cor = 1e-12"))
    distill = load_facility_config(path).peer("hospital-b").distill_config()
    assert (distill.eps_sec, distill.eps_cor, distill.verification_bits) == (1e-9, 1e-12, 40)
    assert distill.eps == pytest.approx(1.001e-9, rel=1e-12)


def test_duplicate_peer_and_missing_field(deployment: Path) -> None:
    text = (deployment / "hospital-b.toml").read_text()
    block = text[text.index("[[peer]]") :]
    duplicate = deployment / "duplicate-peer.toml"
    duplicate.write_text(text + "\n" + block.replace('saes = ["pacs-a", "ehr-a"]', "saes = []"))
    with pytest.raises(ConfigError, match="listed twice") as info:
        load_facility_config(duplicate)
    assert info.value.field == "peer[1].id"

    no_kme = _variant(deployment, "hospital-b.toml", 'kme = "127.0.0.1:7202"\n', "")
    with pytest.raises(ConfigError, match="required field is missing") as info:
        load_facility_config(no_kme)
    assert info.value.field == "listen.kme"


def test_certificate_must_belong_to_the_facility(deployment: Path) -> None:
    path = _variant(
        deployment, "hospital-a.toml", '\ncert = "pki/hospital-a.pem"', '\ncert = "pki/hospital-b.pem"'
    )
    path.write_text(path.read_text().replace('"pki/hospital-a.key"', '"pki/hospital-b.key"'))
    with pytest.raises(ConfigError, match=r"differs from facility\.id") as info:
        load_facility_config(path)
    assert info.value.field == "tls.cert"


CHANNEL_MISTAKES = [
    ('backend = "numpy"', 'backend = "gpu"', "channel.backend"),
    ('admin = "127.0.0.1:7109"', 'admin = "0.0.0.0:7109"', "channel.admin"),
    ('listen = "127.0.0.1:7100"', 'listen = "127.0.0.1:x"', "channel.listen"),
    ("distance_km = 10.0", "distance_km = -1.0", "fiber.distance_km"),
    ("distance_km = 10.0", "distance = 10.0", "fiber.distance"),
    ("detector_efficiency = 0.1 ", "detector_efficiency = 0.0 ", "fiber.detector_efficiency"),
    ("misalignment = 0.005", "misalignment = 0.7", "fiber.misalignment"),
    ("dark_count = 6e-7", 'dark_count = "low"', "fiber.dark_count"),
    ('kind = "none"', 'kind = "tap"', "eve.kind"),
    ("fraction = 1.0", "fraction = 2.0", "eve.fraction"),
    ('"pki/channel.key"', '"pki/nothing.key"', "tls.key"),
]


@pytest.mark.parametrize(("old", "new", "field"), CHANNEL_MISTAKES)
def test_channel_mistakes_name_the_field(deployment: Path, old: str, new: str, field: str) -> None:
    path = _variant(deployment, "channel.toml", old, new)
    with pytest.raises(ConfigError) as info:
        load_channel_config(path)
    assert info.value.field == field, info.value


def test_eavesdropper_at_start_up(deployment: Path) -> None:
    path = _variant(deployment, "channel.toml", 'kind = "none"', 'kind = "intercept-resend"')
    path.write_text(path.read_text().replace("fraction = 1.0", "fraction = 0.25"))
    eve = load_channel_config(path).eve
    assert eve.kind is EveKind.INTERCEPT_RESEND and eve.fraction == 0.25


def test_invalid_toml_names_the_line(deployment: Path) -> None:
    path = _variant(deployment, "hospital-a.toml", "key_size = 256", "key_size = = 256")
    with pytest.raises(ConfigError) as info:
        load_facility_config(path)
    line = 1 + (deployment / "hospital-a.toml").read_text().splitlines().index("key_size = 256")
    assert info.value.field == str(path)
    assert f"line {line}" in info.value.message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_facility_config(tmp_path / "absent.toml")
    assert info.value.field == str(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7100", ("127.0.0.1", 7100)),
        ("[::1]:0", ("::1", 0)),
        ("kme.hospital-a.example:443", ("kme.hospital-a.example", 443)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, "x.y") == expected


@pytest.mark.parametrize("text", ["", "host", ":80", "[::1:80", "[nothost]:80", "h:-1", "h:65536", "-h-:1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text, "listen.kme")
    assert info.value.field == "listen.kme"


def test_address_str_round_trips() -> None:
    for text in ("[::1]:7100", "127.0.0.1:0"):
        host, port = parse_address(text, "f")
        assert str(Address(host=host, port=port)) == text


def test_check_config(deployment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(deployment / "hospital-a.toml") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("config OK: facility hospital-a")

    bad = _variant(deployment, "hospital-a.toml", "qber_tolerance = 0.11", "qber_tolerance = 0.9")
    assert check_config(bad) == 2
    assert capsys.readouterr().err == "config error: peer[0].qber_tolerance: must be in (0, 0.5)\n"

    assert check_config(deployment / "channel.toml", load_channel_config) == 0
    assert capsys.readouterr().err.startswith("config OK: channel service on 127.0.0.1:7100")


@pytest.mark.parametrize("bad_id", ["-hospital-b", "Hospital-B", "hospital_b", "h" * 64])
def test_a_peer_id_the_hello_refuses_is_refused_by_check_config(
    deployment: Path, capsys: pytest.CaptureFixture[str], bad_id: str
) -> None:
    # Regression: the loader accepted "-hospital-b" (its pattern allowed a leading hyphen) while the hello
    # check refuses it, so such a file passed --check-config and then failed every hello.
    with pytest.raises(FrameError):
        Hello(
            facility="hospital-a",
            peer=bad_id,
            protocol="bb84",
            source="single-photon",
            pulses_per_round=1_000_000,
            next_round=1,
            last_committed=0,
            pending_round=0,
            auth_position=0,
        )
    bad = _variant(deployment, "hospital-a.toml", 'id = "hospital-b"', f'id = "{bad_id}"')
    assert check_config(bad) == 2
    assert capsys.readouterr().err.startswith("config error: peer[0].id: must match ")


def test_pulses_per_round_defaults_by_protocol(deployment: Path) -> None:
    # E91 keys only from coincidences, a fifth of which feed the CHSH witness: it needs 2e7 pairs with the
    # default detectors. BB84 defaults to 2e7 pulses too: the most key per CPU second (issue 16).
    bb84 = load_facility_config(deployment / "hospital-b.toml").peer("hospital-a")
    assert (bb84.protocol, bb84.pulses_per_round) == (ProtocolKind.BB84, 20_000_000)
    assert bb84.rounds_in_flight == 32
    e91 = _variant(deployment, "hospital-b.toml", 'protocol = "bb84"', 'protocol = "e91"')
    peer = load_facility_config(e91).peer("hospital-a")
    assert (peer.protocol, peer.pulses_per_round) == (ProtocolKind.E91, 20_000_000)
    assert DEFAULT_PULSES_PER_ROUND[ProtocolKind.E91] == 20_000_000


@pytest.mark.parametrize("window", [0, 33])
def test_a_window_outside_1_to_32_is_refused_by_name(deployment: Path, window: int) -> None:
    path = _variant(
        deployment, "hospital-b.toml", 'protocol = "bb84"', f'protocol = "bb84"\nrounds_in_flight = {window}'
    )
    with pytest.raises(ConfigError, match="rounds_in_flight"):
        load_facility_config(path)
