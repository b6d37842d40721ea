"""The MLLP gateway between two data planes in this process: python-hl7's `mllp_send` (and raw sockets)
at A's listener, hl7apy's MLLPServer as B's interface engine. ACKs only after the message is durable,
AE/AR with ERR for what is refused, a misbehaving connection never stalls another, order kept, the
engine down at first (retried, then delivered), an engine answering AR (parked), and a crash between the
inbox and the ledger repaired at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from qlinkmed.qlinkd.content.worker import ContentValidator
from qlinkmed.qlinkd.dataplane.records import Outgoing
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.gateways.forwards import LEDGER_FILE, ForwardLedger, ForwardState
from qlinkmed.qlinkd.gateways.hl7_ack import parse_ack
from qlinkmed.qlinkd.gateways.mllp_config import MllpConfig, MllpDestination, MllpRoute
from qlinkmed.qlinkd.gateways.mllp_forward import GATEWAY
from qlinkmed.qlinkd.gateways.mllp_framing import MessageFramed, MllpDecoder, encode
from qlinkmed.qlinkd.gateways.mllp_gateway import MllpGateway
from qlinkmed.qlinkd.ops.audit import AuditLog
from qlinkmed.qlinkd.ops.backoff import Backoff
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from tests.paths import DATA
from tests.polling import wait_for_async
from tests.qlinkd.dataplane.test_dataplane import PairedKeys, _plane
from tests.qlinkd.gateways.mllp_engine import Engine

A, B = "hospital-a", "hospital-b"
ORU = (DATA / "oru_r01.hl7").read_bytes()
MLLP_SEND = shutil.which("mllp_send") or str(Path(__import__("sys").executable).with_name("mllp_send"))


def adt(control_id: str, receiving_application: str = "LAB", *, enhanced: bool = False) -> bytes:
    acks = "|||AL|NE" if enhanced else ""
    return (
        f"MSH|^~\\&|ADT1|HOSP_A|{receiving_application}|HOSP_B|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5"
        f"{acks}\rEVN|A01|20240101120000\rPID|1||{control_id}^^^HOSP_A^MR||DOE^JOHN\rPV1|1|I\r"
    ).encode()


@dataclass
class Pair:
    a: DataPlane
    b: DataPlane
    gateway_a: MllpGateway
    gateway_b: MllpGateway
    ledger_b: ForwardLedger
    port: int
    engine: Engine
    root: Path

    async def exchange(self, *messages: bytes, raw: bytes = b"") -> list[bytes]:
        """Send `messages` (each framed) and `raw` bytes over one connection; the ACKs, in order."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"".join(encode(m) for m in messages) + raw)
            await writer.drain()
            return await read_acks(reader, len(messages))
        finally:
            writer.close()

    def ledger_rows(self, state: ForwardState) -> int:
        return sum(getattr(s, state.value) for s in self.ledger_b.summaries() if s.gateway == GATEWAY)


async def read_acks(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    decoder, acks = MllpDecoder(), list[bytes]()
    async with asyncio.timeout(30):
        while len(acks) < count:
            data = await reader.read(65536)
            if not data:
                break
            acks += [e.message for e in decoder.feed(data) if isinstance(e, MessageFramed)]
    return acks


def fast_backoff(gateway: MllpGateway) -> None:
    for forwarder in gateway.forwarding.forwarders.values():
        forwarder._backoff = Backoff(first_s=0.05, longest_s=0.2, jitter=0.0)


@pytest_asyncio.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = PairedKeys()
    validator = ContentValidator()  # in-process validation: the same rules the daemon's workers apply
    await validator.start()
    engine = Engine().start()
    b = _plane(tmp_path, certs, keys, B, A, None)
    port_b = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port_b))
    config_a = MllpConfig(
        listen=Address(host="127.0.0.1", port=0),
        idle_timeout_s=2.0,
        max_message_bytes=64 << 10,
        max_connections=4,
        routes=(
            MllpRoute(peer=B, receiving_application="LAB"),
            MllpRoute(peer=B, receiving_application="EHR"),
        ),
    )
    engine_address = Address(host="127.0.0.1", port=engine.port)
    config_b = MllpConfig(
        destinations=(MllpDestination(name="engine", address=engine_address, ack_timeout_s=5),)
    )
    ledger_a = ForwardLedger.open(tmp_path / A / LEDGER_FILE)
    ledger_b = ForwardLedger.open(tmp_path / B / LEDGER_FILE)
    audit_b = AuditLog.open(tmp_path / "b-gateway.audit", facility=B)
    gateway_a = MllpGateway(
        config_a, a, validator, ledger_a, AuditLog.open(tmp_path / "a-gw.audit", facility=A)
    )
    gateway_b = MllpGateway(config_b, b, validator, ledger_b, audit_b)
    fast_backoff(gateway_b)
    port = await gateway_a.start()
    assert port is not None
    await gateway_b.start()
    tasks = [
        asyncio.create_task(a.run_senders()),
        asyncio.create_task(b.run_senders()),
        asyncio.create_task(gateway_b.run()),
    ]
    try:
        yield Pair(a, b, gateway_a, gateway_b, ledger_b, port, engine, tmp_path)
    finally:
        await gateway_a.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await b.stop()
        a.close()
        b.close()
        ledger_a.close()
        ledger_b.close()
        validator.close()
        engine.stop()


def audit_events(path: Path, event: str) -> list[dict[str, object]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


@pytest.mark.asyncio
async def test_mllp_send_gets_a_commit_ack_and_the_engine_gets_the_message_byte_for_byte(pair: Pair) -> None:
    if not Path(MLLP_SEND).exists():
        pytest.skip("mllp_send (python-hl7) is not installed")
    source = pair.root / "oru.hl7"
    source.write_bytes(ORU)
    run = await asyncio.to_thread(
        subprocess.run,
        [MLLP_SEND, "--loose", "--port", str(pair.port), "--file", str(source), "127.0.0.1"],
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    # mllp_send prints each answer as it came, framing included.
    [answer] = [e.message for e in MllpDecoder().feed(run.stdout) if isinstance(e, MessageFramed)]
    # The message asks for enhanced mode (MSH-15 AL): a commit ACK, CA, naming its control ID.
    reply = parse_ack(answer)
    assert (reply.code, reply.control_id) == ("CA", "QLT00001")
    # Durable before the ACK: A's records hold it (queued or already delivered).
    [record] = pair.a.records.list_outgoing()
    assert record.state in (Outgoing.QUEUED, Outgoing.DELIVERED)
    await wait_for_async(lambda: pair.engine.control_ids() == ["QLT00001"], "the engine got the message")
    assert pair.engine.received[0].encode() == ORU.rstrip(b"\r") or pair.engine.received[0].encode() == ORU
    await wait_for_async(
        lambda: pair.ledger_rows(ForwardState.DELIVERED) == 1, "the forward recorded delivered"
    )
    [delivered] = audit_events(pair.root / "b-gateway.audit", "forward_delivered")
    assert delivered["destination"] == "engine" and delivered["gateway"] == "mllp"
    status = pair.gateway_b.status().to_json()
    assert status["destinations"] == [
        {
            "name": "engine",
            "pending": 0,
            "parked": 0,
            "delivered": 1,
            "oldest_pending": None,
            "last_error": None,
        }
    ]
    assert pair.gateway_a.status().to_json()["accepted"] == 1


@pytest.mark.asyncio
async def test_many_messages_on_one_connection_are_acked_in_order_and_reach_the_engine_in_order(
    pair: Pair,
) -> None:
    ids = [f"ORD{i:03d}" for i in range(30)]
    acks = await pair.exchange(*(adt(i) for i in ids))
    assert [(parse_ack(a).code, parse_ack(a).control_id) for a in acks] == [("AA", i) for i in ids]
    await wait_for_async(lambda: len(pair.engine.control_ids()) == len(ids), "all 30 at the engine")
    assert pair.engine.control_ids() == ids


@pytest.mark.asyncio
async def test_an_invalid_message_gets_ae_with_err_and_nothing_is_queued(pair: Pair) -> None:
    msh_only = b"MSH|^~\\&|LIS|A|LAB|B|20240101||ORU^R01|BAD1|P|2.5\r"
    [answer] = await pair.exchange(msh_only)
    reply = parse_ack(answer)
    assert (reply.code, reply.control_id) == ("AE", "BAD1")
    # ERR-3 a table 0357 code, ERR-8 the content rules' own words (whatever they say about it).
    assert re.search(r"\rERR\|\|[^|]*\|[12]\d\d\^[^|]+\^HL70357\|E\|\|\|\|.+", answer.decode())
    assert reply.text
    assert pair.a.records.list_outgoing() == []


@pytest.mark.asyncio
async def test_an_unknown_destination_gets_ar_naming_msh5(pair: Pair) -> None:
    [answer] = await pair.exchange(adt("NOWHERE1", receiving_application="PHARMACY"))
    reply = parse_ack(answer)
    assert (reply.code, reply.control_id) == ("AR", "NOWHERE1")
    assert "103^Table value not found^HL70357" in answer.decode()
    assert "PHARMACY" in reply.text
    assert pair.a.records.list_outgoing() == []


@pytest.mark.asyncio
async def test_enhanced_mode_errors_are_commit_rejects(pair: Pair) -> None:
    [answer] = await pair.exchange(adt("ENH1", receiving_application="PHARMACY", enhanced=True))
    assert parse_ack(answer).code == "CR"


@pytest.mark.asyncio
async def test_an_oversized_frame_gets_ar_and_the_connection_goes_on(pair: Pair) -> None:
    huge = adt("HUGE1") + b"NTE|1||" + b"x" * (200 << 10) + b"\r"
    acks = await pair.exchange(huge, adt("AFTER1"))
    assert [(parse_ack(a).code, parse_ack(a).control_id) for a in acks] == [("AR", "HUGE1"), ("AA", "AFTER1")]
    assert "exceeds this gateway's limit" in parse_ack(acks[0]).text


@pytest.mark.asyncio
async def test_garbage_between_frames_is_skipped_and_a_message_without_msh_is_rejected(pair: Pair) -> None:
    acks = await pair.exchange(b"PID|1||123\r", adt("OK1"), raw=b"")
    assert parse_ack(acks[0]).code == "AR" and parse_ack(acks[0]).control_id == ""
    assert parse_ack(acks[1]).code == "AA"
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.port)
    writer.write(b"hello there\r\n" + encode(adt("OK2")))
    await writer.drain()
    [ack] = await read_acks(reader, 1)
    assert parse_ack(ack).control_id == "OK2"
    writer.close()


@pytest.mark.asyncio
async def test_a_connection_stalled_inside_a_frame_is_closed_and_never_holds_up_another(pair: Pair) -> None:
    stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", pair.port)
    stalled.write(b"\x0b" + adt("STALL1")[:30])
    await stalled.drain()
    # Another connection is served while the first one hangs inside its frame.
    [ack] = await pair.exchange(adt("FREE1"))
    assert parse_ack(ack).code == "AA"
    # The stalled one is closed after the idle timeout (2 s here) without an answer.
    async with asyncio.timeout(30):
        assert await stalled_reader.read() == b""
    stalled.close()
    assert "inside a frame" in (pair.gateway_a.status().last_error or "")


@pytest.mark.asyncio
async def test_a_flood_of_garbage_closes_the_connection(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.port)
    with contextlib.suppress(ConnectionError):
        writer.write(b"GET / HTTP/1.1\r\n" * 10_000)
        await writer.drain()
    async with asyncio.timeout(30):
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
    writer.close()
    assert "outside any MLLP frame" in (pair.gateway_a.status().last_error or "")


@pytest.mark.asyncio
async def test_engine_down_at_first_is_retried_then_delivered(pair: Pair) -> None:
    port = pair.engine.port
    pair.engine.stop()
    [ack] = await pair.exchange(adt("RETRY1"))
    assert parse_ack(ack).code == "AA"  # durable at A: the engine's state is not the sender's business
    await wait_for_async(
        lambda: any(s.last_error for s in pair.ledger_b.summaries()), "a failed attempt recorded"
    )
    assert pair.ledger_rows(ForwardState.PENDING) == 1
    pair.engine = Engine(port=port).start()
    await wait_for_async(lambda: pair.engine.control_ids() == ["RETRY1"], "delivered once the engine is up")
    await wait_for_async(lambda: pair.ledger_rows(ForwardState.DELIVERED) == 1, "recorded delivered")
    failed = audit_events(pair.root / "b-gateway.audit", "forward_failed")
    assert failed and all(r["destination"] == "engine" for r in failed)


@pytest.mark.asyncio
async def test_an_engine_answering_ar_parks_the_message_and_the_next_one_goes_on(pair: Pair) -> None:
    pair.engine.answer = "AR"
    await pair.exchange(adt("PARK1"))
    await wait_for_async(lambda: pair.ledger_rows(ForwardState.PARKED) == 1, "the message parked")
    [parked] = audit_events(pair.root / "b-gateway.audit", "forward_parked")
    assert str(parked["detail"]).startswith("AR")
    pair.engine.answer = "AA"
    await pair.exchange(adt("NEXT1"))
    await wait_for_async(lambda: pair.ledger_rows(ForwardState.DELIVERED) == 1, "the next one delivered")
    assert pair.engine.control_ids() == ["PARK1", "NEXT1"]


@pytest.mark.asyncio
async def test_an_engine_answering_ae_is_retried_holding_the_line(pair: Pair) -> None:
    pair.engine.answer = "AE"
    await pair.exchange(adt("HOLD1"), adt("HOLD2"))
    await wait_for_async(lambda: len(pair.engine.control_ids()) >= 3, "HOLD1 tried three times")
    assert set(pair.engine.control_ids()) == {"HOLD1"}  # HOLD2 waits behind it
    pair.engine.answer = "AA"
    await wait_for_async(lambda: pair.ledger_rows(ForwardState.DELIVERED) == 2, "both delivered")
    ids = pair.engine.control_ids()
    assert ids[-2:] == ["HOLD1", "HOLD2"] and set(ids[:-2]) == {"HOLD1"}


@pytest.mark.asyncio
async def test_an_arrival_without_its_ledger_row_is_forwarded_after_a_restart(
    pair: Pair, tmp_path: Path
) -> None:
    # B's gateway is not told of the arrival (as if the daemon died between the inbox commit and the
    # ledger write): the message is in B's inbox, the ledger has no row for it.
    pair.b._arrival_listeners.clear()
    await pair.exchange(adt("LOST1"))
    await wait_for_async(pair.b.records.list_incoming, "the message in B's inbox")
    assert pair.ledger_rows(ForwardState.PENDING) + pair.ledger_rows(ForwardState.DELIVERED) == 0
    # The restarted gateway reconciles, and forwards it.
    assert pair.gateway_b.forwarding.reconcile() == 1
    assert pair.gateway_b.forwarding.reconcile() == 0
    for forwarder in pair.gateway_b.forwarding.forwarders.values():
        forwarder.wake()
    await wait_for_async(lambda: pair.engine.control_ids() == ["LOST1"], "forwarded after reconciliation")


@pytest.mark.asyncio
async def test_an_engine_that_closes_after_each_message_costs_no_failed_attempt(pair: Pair) -> None:
    # hl7apy's server answers one message per connection and closes it: the forwarder must notice the
    # closed connection and open a new one, not count a failure and wait out a backoff.
    ids = [f"SEQ{i}" for i in range(5)]
    await pair.exchange(*(adt(i) for i in ids))
    await wait_for_async(lambda: pair.ledger_rows(ForwardState.DELIVERED) == 5, "all five delivered")
    assert pair.engine.control_ids() == ids
    assert audit_events(pair.root / "b-gateway.audit", "forward_failed") == []


@pytest.mark.asyncio
async def test_connections_beyond_the_limit_are_closed_at_once_and_the_others_served(pair: Pair) -> None:
    held = [await asyncio.open_connection("127.0.0.1", pair.port) for _ in range(4)]
    await wait_for_async(lambda: pair.gateway_a.status().connections_open == 4, "four connections open")
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.port)
    async with asyncio.timeout(30):
        assert await reader.read() == b""  # closed without a word
    writer.close()
    assert "connections already open" in (pair.gateway_a.status().last_error or "")
    # The held ones are still served.
    held_reader, held_writer = held[0]
    held_writer.write(encode(adt("HELD1")))
    [ack] = await read_acks(held_reader, 1)
    assert parse_ack(ack).code == "AA"
    for _, w in held:
        w.close()
    await wait_for_async(lambda: pair.gateway_a.status().connections_open == 0, "all closed")


@pytest.mark.asyncio
async def test_a_refusal_by_the_content_rules_keeps_their_words_out_of_log_and_status(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    # The content rules may quote the message (patient data): their text goes back in the ACK only.
    msh_only = b"MSH|^~\\&|LIS|A|LAB|B|20240101||ORU^R01|BAD2|P|2.5\r"
    [answer] = await pair.exchange(msh_only)
    words = parse_ack(answer).text.rsplit("|", 1)[-1]
    assert words
    assert words not in caplog.text
    assert words not in (pair.gateway_a.status().last_error or "")
    assert "BAD2" in (pair.gateway_a.status().last_error or "")
