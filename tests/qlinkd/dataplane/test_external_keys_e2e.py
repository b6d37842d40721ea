"""``key_source = "etsi014"`` end to end, with real processes on loopback. Two ordinary qlinkd daemons,
kme-1 and kme-2, run an emulated QKD link that fills their pools; their ETSI GS QKD 014 APIs stand in for
the KMEs of two QKD hardware boxes. Two more daemons, hospital-a and hospital-b, run no link at all: their
data plane takes its keys from kme-1 and kme-2 as SAEs ``ehr-kme-1`` and ``ehr-kme-2``, with SAE
certificates of the KMEs' CA.

A study and an EHR message go from A to B bit-exact; both ends audit the same session key IDs, kme-1
audits handing exactly those to A's SAE and kme-2 handing them to B's SAE, once each. With kme-1 down a
transfer waits queued (status says why) and flows once kme-1 is back. A session naming a key ID kme-2 does
not know is refused, audited, and nothing is delivered."""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.commands.status import format_status
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.dataplane import wire as dm
from qlinkmed.qlinkd.dataplane.send_machine import SenderMachine
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from qlinkmed.qlinkd.testbed.readers import reader_token, reader_token_file
from tests.cli import qlink
from tests.dicom_factory import make_ct_study
from tests.paths import DATA
from tests.polling import wait_for
from tests.testbeds import Testbeds

K1, K2 = "kme-1", "kme-2"
A, B = "hospital-a", "hospital-b"
KME_OF = {A: K1, B: K2}
PULSES = 700_000
KEY_BITS = 64_000
"""Key each KME should own before the first transfer: sessions and a message's one-time pad."""


def sae(facility: str) -> str:
    """The data-plane SAE of `facility` at its KME: one of the SAEs the KME deployment registers."""
    return f"ehr-{KME_OF[facility]}"


@dataclass(frozen=True, slots=True)
class Net:
    kmes: ProcessGroup
    hospitals: ProcessGroup
    a: DataTarget
    b: DataTarget
    """B's inbox as its all-data reader sees it."""

    def restart_a(self) -> None:
        """SIGTERM hospital-a and start it again, so no session keyed before can carry what is sent next."""
        self.hospitals.kill(A, 15)
        self.hospitals.start(A)
        self.hospitals.wait_ready(A)

    def delivered_at_b(self, tid: str) -> bool:
        code, body = self.b.json("GET", f"/v1/inbox/{tid}")
        return code == 200 and body.get("state") == "delivered"

    @property
    def k(self) -> Deployment:
        return self.kmes.deployment

    @property
    def h(self) -> Deployment:
        return self.hospitals.deployment

    def config(self, facility: str) -> str:
        return str(self.h.facilities[facility])

    def reading(self, facility: str) -> tuple[str, ...]:
        """`qlink inbox` flags for `facility`'s all-data reader."""
        return (
            "--user-token-file",
            str(reader_token_file(self.h, facility)),
            "--config",
            self.config(facility),
        )

    def audit(self, facility: str) -> list[dict[str, Any]]:
        deployment = self.k if facility in (K1, K2) else self.h
        path = deployment.root / "state" / facility / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def status(self, facility: str) -> dict[str, Any]:
        target = DataTarget(self.h.local_url(facility), _token(self.h, facility))
        code, body = target.json("GET", "/v1/status")
        assert code == 200, body
        return dict(body)


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 and body["links"] else 0


def _use_external_kmes(h: Deployment, k: Deployment) -> None:
    """Replace each hospital's [[peer]] (an emulated link) by one keyed by its KME."""
    for me, other in ((A, B), (B, A)):
        path = h.facilities[me]
        text = path.read_text()
        cert, key = k.pki(sae(me))
        path.write_text(
            text[: text.index("[[peer]]")]
            + f"""[[peer]]
id = "{other}"
key_source = "etsi014"
data_address = "127.0.0.1:{h.ports[other + ".data"]}"

[peer.etsi014]
kme_url = "{k.kme_url(KME_OF[me])}"
sae_id = "{sae(me)}"
peer_sae_id = "{sae(other)}"
client_cert = "{cert}"
client_key = "{key}"
ca = "{k.root / "pki" / "ca.pem"}"
"""
        )


@pytest.fixture(scope="module")
def net(module_testbeds: Testbeds) -> Iterator[Net]:
    kmes = module_testbeds.launch(
        facilities=(K1, K2), pulses_per_round=PULSES, low_watermark_bits=400_000, high_watermark_bits=800_000
    )
    k = kmes.deployment
    k1 = DataTarget(k.local_url(K1), _token(k, K1))
    k2 = DataTarget(k.local_url(K2), _token(k, K2))
    wait_for(lambda: _owned_bits(k1) >= KEY_BITS and _owned_bits(k2) >= KEY_BITS, "key in both KMEs")
    h = module_testbeds.write(facilities=(A, B))
    _use_external_kmes(h, k)
    hospitals = module_testbeds.start(h, A, B)  # no channel service: nothing of theirs needs one
    # B's inbox is read by a user with the testbed's all-data role: the facility token sends only.
    a, b = DataTarget(h.local_url(A), _token(h, A)), DataTarget(h.local_url(B), reader_token(h, B))
    yield Net(kmes, hospitals, a, b)
    for group in (hospitals, kmes):
        for name, child in group.children.items():
            assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"


def _inbox_fetch(net: Net, capsys: pytest.CaptureFixture[str], tid: str, out: Path) -> dict[str, bytes]:
    code, printed, err = qlink(capsys, "inbox", "fetch", tid, "--out", str(out), "--json", *net.reading(B))
    assert code == 0, err
    return {Path(f["path"]).name: Path(f["path"]).read_bytes() for f in json.loads(printed)["files"]}


def _sessions(net: Net, facility: str, role: str) -> list[dict[str, Any]]:
    return [r for r in net.audit(facility) if r["event"] == "data_session" and r["role"] == role]


def _delivered_ids(net: Net, kme: str, event: str, sae_field: str, sae_id: str) -> Counter[str]:
    return Counter(
        key_id
        for r in net.audit(kme)
        if r["event"] == event and r[sae_field] == sae_id
        for key_id in r["key_IDs"]
    )


def test_study_and_ehr_go_bit_exact_keyed_by_the_external_kmes(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = {f"ct{i}.dcm": data for i, data in enumerate(make_ct_study(3, 64, 64, seed=31))}
    for name, data in study.items():
        (study_dir / name).write_bytes(data)
    code, out, err = qlink(capsys, "send", "--to", B, str(study_dir), "--json", "--config", net.config(A))
    assert code == 0, err
    sent = json.loads(out)
    assert (sent["state"], sent["kind"]) == ("delivered", "study")
    assert _inbox_fetch(net, capsys, sent["transfer_id"], tmp_path / "got") == study

    original = (DATA / "fhir_bundle.json").read_bytes()
    code, out, err = qlink(
        capsys, "ehr", "send", "--to", B, str(DATA / "fhir_bundle.json"), "--json", "--config", net.config(A)
    )
    assert code == 0, err
    ehr = json.loads(out)
    assert ehr["state"] == "delivered"
    assert _inbox_fetch(net, capsys, ehr["transfer_id"], tmp_path / "got") == {"fhir_bundle.json": original}
    # It went by one-time pad (several KME keys: the pad is larger than the KME's max_key_size), not AEAD.
    assert not [r for r in net.audit(A) if r["event"] == "otp_fallback"]

    # Both ends name the same session keys, and say where they came from.
    sender, receiver = _sessions(net, A, "sender"), _sessions(net, B, "receiver")
    assert sender and [r["key_ids"] for r in sender] == [r["key_ids"] for r in receiver]
    assert {r["key_source"] for r in sender + receiver} == {"etsi014"}
    session_ids = {k for r in sender for k in r["key_ids"]}

    # kme-1 handed every key A used to A's SAE once; kme-2 handed each to B's SAE once; nothing else.
    taken = _delivered_ids(net, K1, "etsi.enc_keys", "master_SAE_ID", sae(A))
    assert session_ids <= set(taken) and set(taken.values()) == {1}
    assert len(taken) > len(session_ids)  # the message's one-time-pad keys

    def fetched() -> Counter[str] | None:
        got = _delivered_ids(net, K2, "etsi.dec_keys", "slave_SAE_ID", sae(B))
        return got if set(got) == set(taken) else None

    assert set(wait_for(fetched, "kme-2 to hand B every key A took").values()) == {1}

    # Status: no emulated link at all, and the data plane says where each peer's keys come from.
    status = net.status(A)
    assert status["links"] == []
    assert [(p["peer"], p["key_source"]) for p in status["data_plane"]["peers"]] == [(B, "etsi014")]
    # The text view shows the peer and where its keys come from, not "no links configured".
    text = format_status(status)
    assert f"peer {B}" in text and "external ETSI GS QKD 014 KME" in text
    assert "no links configured" not in text
    k_status = DataTarget(net.k.local_url(K1), _token(net.k, K1)).json("GET", "/v1/status")[1]
    assert [p["key_source"] for p in k_status["data_plane"]["peers"]] == ["emulated"]


def _queue_oru(net: Net, capsys: pytest.CaptureFixture[str]) -> str:
    """`qlink ehr send --no-wait` of the ORU^R01 from A to B; its transfer id."""
    code, out, err = qlink(
        capsys,
        "ehr",
        "send",
        "--to",
        B,
        str(DATA / "oru_r01.hl7"),
        "--no-wait",
        "--json",
        "--config",
        net.config(A),
    )
    assert code == 0, err
    return str(json.loads(out)["transfer_id"])


def test_with_the_kme_away_a_transfer_waits_queued_then_flows(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net.kmes.kill(K1, 15)  # SIGTERM: kme-1 stops cleanly
    # A restarts, so no session keyed before the KME went away can carry the message.
    net.restart_a()
    tid = _queue_oru(net, capsys)

    def waiting() -> str | None:
        state = net.status(A)["data_plane"]["senders"][B]
        return state if "cannot connect" in state else None

    reason = wait_for(waiting, "A's sender to say it waits for key from kme-1, which it cannot reach")
    assert reason.startswith(f"waiting for key: KME {net.k.kme_url(K1)}")
    _, transfers = net.a.json("GET", "/v1/transfers")
    assert [t["state"] for t in transfers["transfers"] if t["transfer_id"] == tid] == ["queued"]

    net.kmes.start(K1)
    net.kmes.wait_ready(K1)

    wait_for(lambda: net.delivered_at_b(tid), "the queued message at B once kme-1 is back", timeout=90)
    assert _inbox_fetch(net, capsys, tid, tmp_path) == {"oru_r01.hl7": (DATA / "oru_r01.hl7").read_bytes()}


def test_a_key_id_the_slave_kme_does_not_know_is_refused(net: Net) -> None:
    before = {r["transfer"] for r in net.audit(B) if r["event"] == "transfer_received"}
    unknown = str(uuid.uuid4())
    cert, key = net.h.pki(A)
    context = pki.client_context(net.h.root / "pki" / "ca.pem", cert, key)
    opening = dm.encode_open(SenderMachine(facility=A, key_ids=[unknown]).opening())
    with (
        socket.create_connection(("127.0.0.1", net.h.ports[B + ".data"]), timeout=60) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(len(opening).to_bytes(4, "big") + opening)
        # B fetches the key from kme-2, which never heard of it: B closes without a Ready.
        try:
            answer = tls.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            answer = b""
        assert answer == b""

    def refusal() -> dict[str, Any] | None:
        hits = [r for r in net.audit(B) if r["event"] == "data_frame_rejected" and unknown in r["detail"]]
        return hits[0] if hits else None

    audited = wait_for(refusal, "B's audit record of the refused session")
    assert (audited["peer"], audited["reason"]) == (A, "key_unknown")
    assert {r["transfer"] for r in net.audit(B) if r["event"] == "transfer_received"} == before
    assert not [r for r in _sessions(net, B, "receiver") if unknown in r["key_ids"]]


def test_a_kme_that_refuses_the_sae_certificate_keeps_the_transfer_queued(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = net.h.facilities[A]
    good = config.read_text()
    # A certificate of the KMEs' CA, but of an SAE that kme-2 serves, not kme-1: kme-1 answers 401.
    wrong_cert, wrong_key = net.k.pki(f"pacs-{K2}")
    right_cert, right_key = net.k.pki(sae(A))
    config.write_text(good.replace(str(right_cert), str(wrong_cert)).replace(str(right_key), str(wrong_key)))
    try:
        net.restart_a()
        tid = _queue_oru(net, capsys)

        def refused() -> str | None:
            state = net.status(A)["data_plane"]["senders"][B]
            return state if "answered 401" in state else None

        reason = wait_for(refused, "A's sender to report kme-1's refusal")
        assert "the calling SAE is not registered with this KME" in reason
        _, transfers = net.a.json("GET", "/v1/transfers")
        assert [t["state"] for t in transfers["transfers"] if t["transfer_id"] == tid] == ["queued"]
    finally:
        config.write_text(good)
        net.restart_a()

    # With its own certificate back, A's queued message goes.
    wait_for(
        lambda: net.delivered_at_b(tid),
        "the queued message at B once A presents its own SAE certificate",
        timeout=90,
    )
