"""HL7 v2 over MLLP end to end: the channel service and two facility daemons as real processes on
loopback, python-hl7's `mllp_send` as the sending interface engine at hospital-a, and hl7apy's MLLPServer
as the receiving interface engine behind hospital-b (started, stopped and restarted by the test).

The engine is down when the first message arrives at B: B retries, and delivers once it is up. Several
messages in one `mllp_send` run reach the engine in order. An invalid message is answered AE with an ERR
naming the problem. An engine answering AR parks the message. Every ACK is checked at both ends."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.gateways.hl7_ack import AckReply, parse_ack
from qlinkmed.qlinkd.gateways.mllp_framing import MessageFramed, MllpDecoder
from qlinkmed.qlinkd.ops.audit import AUDIT_FILE
from qlinkmed.qlinkd.testbed.deployment import Deployment, free_ports
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from tests.paths import DATA
from tests.polling import wait_for
from tests.qlinkd.gateways.mllp_engine import Engine
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 64_000
MLLP_SEND = shutil.which("mllp_send") or str(Path(sys.executable).with_name("mllp_send"))
ORU = (DATA / "oru_r01.hl7").read_bytes()

pytestmark = pytest.mark.skipif(
    not Path(MLLP_SEND).exists(), reason="mllp_send (python-hl7) is not installed"
)


def adt(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|ADT1|HOSP_A|LAB|HOSP_B|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5\r"
        f"EVN|A01|20240101120000\rPID|1||{control_id}^^^HOSP_A^MR||DOE^JOHN\rPV1|1|I\r"
    ).encode()


@dataclass
class Link:
    deployment: Deployment
    group: ProcessGroup
    listen_port: int
    engine_port: int
    engines: list[Engine] = field(default_factory=list)

    def audit(self, facility: str, event: str) -> list[dict[str, object]]:
        path = self.deployment.root / "state" / facility / AUDIT_FILE
        return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]

    def start_engine(self, answer: str = "AA") -> Engine:
        engine = Engine(answer=answer, port=self.engine_port).start()
        self.engines.append(engine)
        return engine

    def send(self, tmp_path: Path, *messages: bytes) -> list[AckReply]:
        """Run mllp_send on a file of `messages` (CR segments, one after the other); the ACKs it printed."""
        source = tmp_path / f"batch-{len(list(tmp_path.glob('batch-*')))}.hl7"
        source.write_bytes(b"".join(messages))
        run = subprocess.run(
            [MLLP_SEND, "--loose", "--port", str(self.listen_port), "--file", str(source), "127.0.0.1"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr.decode()[-2000:]
        frames = [e.message for e in MllpDecoder().feed(run.stdout) if isinstance(e, MessageFramed)]
        return [parse_ack(f) for f in frames]


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def link(module_testbeds: Testbeds) -> Iterator[Link]:
    deployment = module_testbeds.write(pulses_per_round=PULSES)
    listen_port, engine_port = free_ports(2)
    with deployment.facilities[A].open("a") as config:
        config.write(
            f'\n[gateway.mllp]\nlisten = "127.0.0.1:{listen_port}"\n'
            f'\n[[gateway.mllp.route]]\npeer = "{B}"\nreceiving_application = "LAB"\n'
            f'\n[[gateway.mllp.route]]\npeer = "{B}"\nreceiving_application = "EHR"\n'
        )
    with deployment.facilities[B].open("a") as config:
        config.write(
            f'\n[gateway.mllp]\n[[gateway.mllp.destination]]\nname = "engine"\n'
            f'address = "127.0.0.1:{engine_port}"\nack_timeout_s = 10\n'
        )
    group = module_testbeds.start(deployment)
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), _token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    link = Link(deployment, group, listen_port, engine_port)
    try:
        yield link
        for name, child in group.children.items():
            assert "Traceback" not in child.log(), f"{name}:\n{child.log()[-3000:]}"
    finally:
        for engine in link.engines:
            engine.stop()


def test_engine_down_at_first_then_delivered_and_order_kept(link: Link, tmp_path: Path) -> None:
    [first] = link.send(tmp_path, ORU)
    # Durable at A: a commit ACK (the message asks for enhanced mode), naming its control ID.
    assert (first.code, first.control_id) == ("CA", "QLT00001")
    wait_for(lambda: link.audit(B, "forward_failed"), "B failing to reach the engine", timeout=90)
    engine = link.start_engine()
    wait_for(lambda: engine.control_ids() == ["QLT00001"], "the first message at the engine", timeout=90)
    # Several messages in one connection: each ACKed AA in order, and at the engine in the same order.
    ids = [f"E2E{i:03d}" for i in range(20)]
    acks = link.send(tmp_path, *(adt(i) for i in ids))
    assert [(r.code, r.control_id) for r in acks] == [("AA", i) for i in ids]
    wait_for(lambda: len(engine.control_ids()) == 1 + len(ids), "all twenty at the engine", timeout=90)
    assert engine.control_ids() == ["QLT00001", *ids]
    # The audit record follows the engine's ACK (and the ledger write): wait for it, do not race it.
    wait_for(lambda: len(link.audit(B, "forward_delivered")) == 1 + len(ids), "every delivery audited")
    delivered = link.audit(B, "forward_delivered")
    assert {r["destination"] for r in delivered} == {"engine"}


def test_an_invalid_message_is_answered_ae_with_err_at_a(link: Link, tmp_path: Path) -> None:
    [reply] = link.send(tmp_path, b"MSH|^~\\&|LIS|A|LAB|B|20240101||ORU^R01|BAD1|P|2.5\r")
    assert (reply.code, reply.control_id) == ("AE", "BAD1")
    assert "HL70357" in reply.text and "MSH" in reply.text


def test_an_engine_answering_ar_parks_the_message(link: Link, tmp_path: Path) -> None:
    if link.engines:
        link.engines.pop().stop()
    link.start_engine(answer="AR")
    [reply] = link.send(tmp_path, adt("PARKME"))
    assert reply.code == "AA"
    wait_for(
        lambda: [r for r in link.audit(B, "forward_parked") if str(r["detail"]).startswith("AR")],
        "B parking the message the engine refused",
        timeout=90,
    )
    # The operator fixes the engine and releases the parked message with the real CLI: it is owed again,
    # delivered, and the release is audited with who and why.
    link.engines[-1].answer = "AA"
    config = str(link.deployment.facilities[B])
    listing = _qlink("forward", "list", "--state", "parked", "--json", "--config", config)
    [parked] = json.loads(listing.stdout)["forwards"]
    assert (parked["gateway"], parked["destination"], parked["state"]) == ("mllp", "engine", "parked")
    assert str(parked["last_error"]).startswith("AR")
    released = _qlink("forward", "release", "mllp", "--note", "engine mapping fixed", "--config", config)
    assert "1 parked forward(s) owed again" in released.stdout
    # The engine saw it once already (and answered AR); now it takes it.
    wait_for(
        lambda: (
            link.engines[-1].control_ids().count("PARKME") == 2
            and any(r["transfer"] == parked["transfer"] for r in link.audit(B, "forward_delivered"))
        ),
        "the released message delivered to the engine",
        timeout=90,
    )
    [audited] = link.audit(B, "forward_released")
    assert (audited["transfer"], audited["note"]) == (parked["transfer"], "engine mapping fixed")
    again = _qlink("forward", "release", "mllp", "--config", config)
    assert "nothing was parked there" in again.stdout


def test_the_forwards_api_refuses_bad_requests_by_name(link: Link) -> None:
    b = DataTarget(link.deployment.local_url(B), _token(link.deployment, B))
    status, body = b.json("GET", "/v1/forwards?state=lost")
    assert status == 400 and "state must be one of" in body["message"]
    status, body = b.json("GET", "/v1/forwards?limit=0")
    assert status == 400 and "limit" in body["message"]
    status, body = b.json("POST", "/v1/forwards/release", body=b'{"gateway": "x400", "who": "op"}')
    assert status == 400 and "gateway must be one of" in body["message"]
    status, body = b.json("POST", "/v1/forwards/release", body=b'{"gateway": "mllp"}')
    assert status == 400 and "who" in body["message"]
    stranger = DataTarget(link.deployment.local_url(B), "not-the-token")
    status, body = stranger.json("GET", "/v1/forwards")
    assert status == 401 and "token" in body["message"]


def _qlink(*argv: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-m", "qlinkmed.client", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return run
