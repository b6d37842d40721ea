"""Data-plane benchmark (issue 4): a study of about 1 GiB between two daemons on loopback, beside the
same-run figure for plain asyncio sockets with AES-GCM; and EHR latency from the API call to the peer's
inbox. Not a test: it prints figures (medians over --runs; the machine is shared).

    python bench/bench_dataplane.py [--gib 1.0] [--runs 3] [--ehr 100] [--rounds-running]
                                    [--sessions 100] [--sessions-only]

QKD rounds: by default each study run starts once the key pool has reached its high watermark and rounds
have paused, the steady state of a link with a full pool (the production watermark, 8,000,000 bits, takes
minutes to fill on loopback, so the benchmark sets a low one). --rounds-running sets a watermark the
link never reaches, so rounds (emulation and distillation in the channel and both daemons) share the
2 cores with the transfer throughout.

Study: synthetic 512x512 16-bit CT slices (tests/dicom_factory.py). For each run the figures are
- upload: client -> local daemon, checked and fsynced in the outbox (the client's "queued");
- wire: the receiver's first contact to the last byte fsynced and SHA-256-verified in its spool, i.e. TLS +
  AES-256-GCM frames keyed from QKD key + spool writes + fsyncs + hashing: the throughput figure;
- at rest: the receiver turning the spooled study into cipher images (the seed paper's cipher) before
  it reports "delivered".
Baseline: the same files read from disk, sent as AES-GCM frames over a plain asyncio TCP socket to a
second process that decrypts them and writes one file, fsynced at the end.
EHR: --runs runs, a second apart, of --ehr FHIR Bundle messages each, one after the other through
POST /v1/ehr?wait: one-way = from the call's start until the message is durably in the peer's inbox: the
stored_at of the receiving daemon's audit record of its arrival, taken when the inbox record's commit
(fsync) has returned (same host clock); round trip = until the sender hears "delivered". Each run's
median, and the median of those, are printed. The disk is flushed (os.sync) before the EHR runs, and the
time that took is printed, so no writeback left by the studies can land on the EHR path's fsyncs.
Then the same-run floor: the two steps each end must take for every message (FHIR validation, a fsynced
record commit), timed back to back in the benchmark's own process; the path pays each twice.
Session setup (--sessions per run, --runs runs, alternating): the data plane's own sender and receiver
sessions in this process over loopback mutual TLS, QKD key from memory, each timed from the dial to the
sender holding the receiver's Ready under its traffic keys (TCP + TLS handshake, Open, the receiver's key
fetch and derivation), with and without the post-quantum hybrid (ML-KEM-768 key generation, encapsulation
and decapsulation, 1184 + 1088 more bytes on the wire); and the ML-KEM operations alone. --sessions-only
runs this part alone (no daemons).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _deploy import A, B, read_audit
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qlinkmed.client.commands.demo import _metric, _token
from qlinkmed.client.commands.send import upload
from qlinkmed.client.data_http import DataTarget
from qlinkmed.client.demo_data import FHIR_BUNDLE
from qlinkmed.qlinkd.content import validate
from qlinkmed.qlinkd.dataplane.inbox import Inbox
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.outbox import Outbox
from qlinkmed.qlinkd.dataplane.pads import PAD_KEY_BYTES
from qlinkmed.qlinkd.dataplane.receiver import ReceiverContext, ReceiverSession
from qlinkmed.qlinkd.dataplane.records import TransferRecords
from qlinkmed.qlinkd.dataplane.sender import SenderContext, _handshake
from qlinkmed.qlinkd.ops.pki import client_context, server_context, write_demo_pki
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal.hybrid import MLKEM_SEED_BYTES, HybridOffer, hybrid_available, respond
from qlinkmed.qlinkd.testbed.deployment import Deployment, write_loopback_deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from qlinkmed.qlinkd.testbed.readers import reader_token
from tests.dicom_factory import make_ct_study

SLICE = 512
FRAME = 1 << 20


def write_study(folder: Path, gib: float) -> list[Path]:
    per_slice = len(make_ct_study(1, SLICE, SLICE, seed=0)[0])
    count = max(1, round(gib * (1 << 30) / per_slice))
    paths = []
    for i, data in enumerate(make_ct_study(count, SLICE, SLICE, seed=7)):
        path = folder / f"ct{i:05d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


# ---- baseline: plain asyncio + AES-GCM --------------------------------------------------------------------


def _baseline_receiver(port_queue: Any, out_path: str, key: bytes) -> None:
    async def main() -> None:
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            aead = AESGCM(key)
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                while True:
                    head = await reader.readexactly(4)
                    size = int.from_bytes(head, "big")
                    if size == 0:
                        break
                    frame = await reader.readexactly(size)
                    os.write(fd, aead.decrypt(frame[:12], memoryview(frame)[12:], None))
                os.fsync(fd)
            finally:
                os.close(fd)
            writer.write(b"k")
            await writer.drain()
            done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 22)
        port_queue.put(server.sockets[0].getsockname()[1])
        await done.wait()
        server.close()

    asyncio.run(main())


def baseline(paths: list[Path], workdir: Path) -> float:
    key = os.urandom(32)
    queue: Any = multiprocessing.Queue()
    proc = multiprocessing.Process(
        target=_baseline_receiver, args=(queue, str(workdir / "baseline.out"), key)
    )
    proc.start()
    port = queue.get(timeout=30)

    async def send() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        aead = AESGCM(key)
        counter = 0
        started = time.perf_counter()
        for path in paths:
            with path.open("rb") as handle:
                while block := handle.read(FRAME):
                    nonce = counter.to_bytes(12, "big")
                    counter += 1
                    sealed = aead.encrypt(nonce, block, None)
                    writer.writelines([(12 + len(sealed)).to_bytes(4, "big"), nonce, sealed])
                    await writer.drain()
        writer.write((0).to_bytes(4, "big"))
        await writer.drain()
        await reader.readexactly(1)
        return time.perf_counter() - started

    seconds = asyncio.run(send())
    proc.join()
    (workdir / "baseline.out").unlink()
    return seconds


# ---- qlink ------------------------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float, what: str, *, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(every)
    return value


def link_status(target: DataTarget) -> dict[str, Any]:
    return target.json("GET", "/v1/status")[1]["links"][0]


def otp_fallbacks(target: DataTarget) -> float:
    return _metric(target.request("GET", "/metrics")[1].decode(), "qlink_otp_fallbacks_total")


def study_run(a: DataTarget, b: DataTarget, entries: list[tuple[Path, Any]]) -> dict[str, float]:
    total = sum(info.size for _, info in entries)
    t0 = time.time()
    result = upload(a, B, "study", entries, entries[0][1].study_uid, wait=0, show_progress=False)
    queued = time.time()
    tid = result["transfer_id"]
    record = wait_for(
        lambda: (r := b.json("GET", f"/v1/inbox/{tid}")[1]).get("state") == "delivered" and r,
        900,
        "delivery",
        # The times come from the receiver's record, not from this loop: poll gently, since each answer
        # takes the receiving daemon's event loop away from the transfer being measured.
        every=0.5,
    )
    wire = record["spooled_at"] - record["started_at"]
    return {
        "bytes": total,
        "upload_s": queued - t0,
        "wire_s": wire,
        "wire_gbit_s": total * 8 / wire / 1e9,
        "at_rest_s": record["delivered_at"] - record["spooled_at"],
        "queued_to_delivered_s": record["delivered_at"] - queued,
    }


def received_at(deployment: Deployment) -> dict[str, float]:
    """Transfer id -> when B's inbox held it durably (epoch seconds): the stored_at B audits, taken when
    the inbox record's commit has returned."""
    return {
        r["transfer"]: dt.datetime.fromisoformat(r["stored_at"]).timestamp()
        for r in read_audit(deployment, B)
        if r.get("event") == "transfer_received"
    }


def ehr_run(a: DataTarget, deployment: Deployment, count: int) -> dict[str, float]:
    sent = []
    round_trip = []
    for _ in range(count):
        wall = time.time()
        started = time.perf_counter()
        status, result = a.json("POST", f"/v1/ehr?to={B}&name=bundle.json&wait=30", body=FHIR_BUNDLE)
        round_trip.append(time.perf_counter() - started)
        if result.get("state") != "delivered":
            raise RuntimeError(f"EHR not delivered: HTTP {status} {result}")
        sent.append((result["transfer_id"], wall))
    arrived = received_at(deployment)
    one_way = [arrived[tid] - wall for tid, wall in sent]
    q = statistics.quantiles
    return {
        "one_way_median_ms": statistics.median(one_way) * 1e3,
        "one_way_p90_ms": q(one_way, n=10)[-1] * 1e3,
        "round_trip_median_ms": statistics.median(round_trip) * 1e3,
        "round_trip_p90_ms": q(round_trip, n=10)[-1] * 1e3,
    }


def ehr_floor(folder: Path, count: int = 200) -> dict[str, float]:
    """The work each end must do for every EHR message, back to back in this process: FHIR validation
    with fhir.resources, and a fsynced SQLite commit of the message's record (on the daemons' disk). Run
    after the EHR runs, it gives their figures the same-run speed of the machine: the path pays both twice,
    on a CPU that has gone cold between messages."""
    info = validate("bundle.json", FHIR_BUNDLE)
    records = TransferRecords.open(folder / "floor.sqlite3")
    validations, commits = [], []
    try:
        for _ in range(count):
            started = time.perf_counter()
            validate("bundle.json", FHIR_BUNDLE)
            validations.append(time.perf_counter() - started)
            manifest = Manifest(
                transfer_id=str(uuid.uuid4()),
                sender=A,
                recipient=B,
                kind=TransferKind.EHR,
                files=(FileEntry("bundle.json", len(FHIR_BUNDLE), info.sha256, info.kind.value),),
                created=time.time(),
            )
            started = time.perf_counter()
            records.record_ehr(manifest, blob=FHIR_BUNDLE, key=bytes(32), forms="aead", reason=None)
            commits.append(time.perf_counter() - started)
    finally:
        records.close()
    return {
        "validation_ms": statistics.median(validations) * 1e3,
        "commit_ms": statistics.median(commits) * 1e3,
    }


class _MemoryKeys:
    """Both ends of one pool in memory (the session-setup runs measure the protocol, not the key store)."""

    def __init__(self) -> None:
        self.held: dict[str, bytes] = {}

    name = "emulated"

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        key = DeliveredKey(str(uuid.uuid4()), os.urandom(size_bits // 8))
        self.held[key.key_id] = key.material
        return [key]

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        return [DeliveredKey(k, self.held.pop(k)) for k in key_ids]


async def _session_setups(work: Path, count: int) -> dict[bool, list[float]]:
    """`count` sessions of each kind, opened one after the other and alternating (so a passing load on the
    shared machine spoils both kinds alike); each one's seconds from dial to Ready, by ``hybrid``."""
    certs = write_demo_pki(work / "pki", [A, B])
    keys = _MemoryKeys()
    records = TransferRecords.open(work / "transfers.sqlite3")
    inbox = Inbox(work / "inbox", records, facility=B)
    server_ssl = server_context(certs["ca.pem"], certs[f"{B}.pem"], certs[f"{B}.key"])
    client_ssl = client_context(certs["ca.pem"], certs[f"{A}.pem"], certs[f"{A}.key"])
    servers, senders = {}, {}
    for hybrid in (False, True):
        receiving = ReceiverContext(
            facility=B,
            keys=keys,
            inbox=inbox,
            on_delivered=lambda *a: None,
            on_refused=lambda *a: None,
            hybrid=hybrid,
        )

        async def receive(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ReceiverContext = receiving
        ) -> None:
            try:
                await ReceiverSession(ctx, A, reader, writer).run()
            finally:
                writer.close()

        servers[hybrid] = await asyncio.start_server(receive, "127.0.0.1", 0, ssl=server_ssl)
        senders[hybrid] = SenderContext(
            facility=A,
            peer=B,
            keys=keys,
            records=records,
            outbox=Outbox(work / f"outbox-{hybrid}"),
            wake=asyncio.Event(),
            on_finished=lambda *a: None,
            hybrid=hybrid,
        )
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for i in range(2 * count):
            hybrid = bool(i % 2)
            port = servers[hybrid].sockets[0].getsockname()[1]
            start = time.perf_counter()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ssl, server_hostname="127.0.0.1"
            )
            await _handshake(senders[hybrid], await keys.take(B, 256), reader, writer)
            times[hybrid].append(time.perf_counter() - start)
            writer.close()
            await writer.wait_closed()
    finally:
        for server in servers.values():
            server.close()
        records.close()
    return times


def session_setup(work: Path, runs: int, count: int) -> None:
    """Print the median session setup with and without the hybrid, and the ML-KEM operations' cost."""
    if not hybrid_available():
        print("session setup: the installed cryptography has no ML-KEM-768; skipped", flush=True)
        return
    medians: dict[bool, list[float]] = {False: [], True: []}
    for run in range(runs):
        folder = work / f"setup-{run}"
        folder.mkdir()
        times = asyncio.run(_session_setups(folder, count))
        for hybrid in (False, True):
            medians[hybrid].append(statistics.median(times[hybrid]) * 1e3)
        print(
            f"session setup run {run + 1} (x{count} each, alternating): QKD key alone "
            f"{medians[False][-1]:.2f} ms, with ML-KEM-768 {medians[True][-1]:.2f} ms (medians)",
            flush=True,
        )
    plain, hybrid_ms = statistics.median(medians[False]), statistics.median(medians[True])
    ops: dict[str, list[float]] = {"keygen": [], "encaps": [], "decaps": []}
    for _ in range(count):
        t0 = time.perf_counter()
        offer = HybridOffer(os.urandom(MLKEM_SEED_BYTES))
        public = offer.public_bytes()
        t1 = time.perf_counter()
        ciphertext, _ = respond(public)
        t2 = time.perf_counter()
        offer.finish(ciphertext)
        t3 = time.perf_counter()
        ops["keygen"].append(t1 - t0)
        ops["encaps"].append(t2 - t1)
        ops["decaps"].append(t3 - t2)
    op_ms = {k: statistics.median(v) * 1e3 for k, v in ops.items()}
    print(
        f"session setup, median of {runs} runs: QKD key alone {plain:.2f} ms, with the ML-KEM-768 hybrid "
        f"{hybrid_ms:.2f} ms (+{hybrid_ms - plain:.2f} ms); ML-KEM-768 alone: key generation "
        f"{op_ms['keygen']:.3f} ms, encapsulation {op_ms['encaps']:.3f} ms, decapsulation "
        f"{op_ms['decaps']:.3f} ms",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=1.0, help="study size in GiB (0: one slice)")
    parser.add_argument("--runs", type=int, default=3, help="study runs, and EHR runs (default 3)")
    parser.add_argument("--ehr", type=int, default=100, help="EHR messages per run (default 100)")
    parser.add_argument(
        "--rounds-running",
        action="store_true",
        help="keep QKD rounds running during the transfers (their CPU competes with it on 2 cores)",
    )
    parser.add_argument("--sessions", type=int, default=100, help="sessions per setup run (default 100)")
    parser.add_argument("--sessions-only", action="store_true", help="measure only the session setup")
    args = parser.parse_args()
    if args.runs < 1 or args.ehr < 1 or args.sessions < 1:
        parser.error("--runs, --ehr and --sessions must be at least 1")
    if args.sessions_only:
        with tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
            session_setup(Path(tmp), args.runs, args.sessions)
        return 0
    # Paused mode: the pool fills to a high watermark that also covers every EHR message's one-time pad,
    # and rounds resume only far below it, so they stay paused through the study runs and the EHR phase.
    # (A message costs about 14,000 bits of pad with its manifest and tag key; pad keys are taken ahead,
    # and a session may leave up to one of them unused.)
    ehr_bits = args.runs * (args.ehr * 16_000 + 2 * 8 * PAD_KEY_BYTES)
    # (Rounds alternate the key's owner, so the sender owns about half of the pool.)
    high_watermark = 1_000_000_000 if args.rounds_running else max(400_000, ehr_bits * 12 // 5)
    low_watermark = high_watermark // 2 if args.rounds_running else high_watermark // 10
    with tempfile.TemporaryDirectory(prefix="qlink-bench-") as tmp:
        work = Path(tmp)
        (work / "study").mkdir()
        t = time.perf_counter()
        paths = write_study(work / "study", args.gib)
        entries = [(p, validate(p.name, p.read_bytes())) for p in paths]
        total = sum(i.size for _, i in entries)
        print(
            f"study: {len(paths)} CT slices {SLICE}x{SLICE}, {total:,} bytes ({total / (1 << 30):.3f} GiB), "
            f"made in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        deployment = write_loopback_deployment(
            work / "deploy",
            pulses_per_round=700_000,
            low_watermark_bits=low_watermark,
            high_watermark_bits=high_watermark,
        )
        group = ProcessGroup(deployment)
        try:
            group.start_all(timeout=60)
            a = DataTarget(deployment.local_url(A), _token(deployment, A))
            b = DataTarget(deployment.local_url(B), reader_token(deployment, B))  # a user reads the inbox
            wait_for(lambda: link_status(a)["pool_bits_owned"] >= 100_000, 120, "key")
            rounds = "running" if args.rounds_running else "paused at the pool's high watermark"
            print(f"QKD rounds during the study runs: {rounds}", flush=True)
            runs = []
            baselines = []
            if not args.rounds_running:
                filling = time.perf_counter()
                wait_for(
                    lambda: link_status(a)["rounds_paused"],
                    1800,
                    "the pool to fill and rounds to pause",
                    every=0.5,
                )
                print(
                    f"pool filled to {high_watermark:,} bits (covering the EHR runs' one-time pads) and "
                    f"rounds paused in {time.perf_counter() - filling:.0f} s",
                    flush=True,
                )
            for run in range(args.runs):
                figures = study_run(a, b, entries)
                base = baseline(paths, work)
                figures["baseline_gbit_s"] = total * 8 / base / 1e9
                runs.append(figures)
                print(
                    f"run {run + 1}: upload {figures['upload_s']:.2f} s, wire {figures['wire_s']:.2f} s = "
                    f"{figures['wire_gbit_s']:.2f} Gbit/s, at rest {figures['at_rest_s']:.1f} s; "
                    f"baseline {figures['baseline_gbit_s']:.2f} Gbit/s",
                    flush=True,
                )
                baselines.append(figures["baseline_gbit_s"])
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"median of {args.runs}: qlink {med['wire_gbit_s']:.2f} Gbit/s on the wire "
                f"({med['wire_s']:.2f} s for {total:,} bytes), plain asyncio + AES-GCM "
                f"{med['baseline_gbit_s']:.2f} Gbit/s "
                f"(ratio {med['wire_gbit_s'] / med['baseline_gbit_s']:.2f}); "
                f"upload {med['upload_s']:.2f} s; at rest (image cipher) {med['at_rest_s']:.1f} s; "
                f"queued to delivered {med['queued_to_delivered_s']:.1f} s",
                flush=True,
            )
            if not args.rounds_running:
                wait_for(lambda: link_status(a)["rounds_paused"], 600, "rounds to pause at the watermark")
            wait_for(lambda: link_status(a)["pool_bits_owned"] >= ehr_bits, 600, "key for EHR")
            rounds = "paused" if link_status(a)["rounds_paused"] else "running"
            # The study runs leave gigabytes for the kernel to write back: flush them first, so none of it can
            # land on the EHR path's fsyncs, and say how long that took.
            flushing = time.perf_counter()
            os.sync()
            print(f"disk flushed before the EHR runs in {time.perf_counter() - flushing:.2f} s", flush=True)
            ehr_runs = []
            for run in range(args.runs):
                time.sleep(1.0)  # apart in time: a passing load on the shared machine spoils one run, not all
                before = otp_fallbacks(a)
                ehr = ehr_run(a, deployment, args.ehr)
                ehr["by_pad"] = args.ehr - (otp_fallbacks(a) - before)
                ehr_runs.append(ehr)
                print(
                    f"EHR run {run + 1}: x{args.ehr} (FHIR Bundle {len(FHIR_BUNDLE)} B, "
                    f"{ehr['by_pad']:.0f} by one-time pad, QKD rounds {rounds} at the start): one-way to the "
                    f"durable inbox record, median {ehr['one_way_median_ms']:.2f} ms "
                    f"(p90 {ehr['one_way_p90_ms']:.2f}), round trip median "
                    f"{ehr['round_trip_median_ms']:.2f} ms (p90 {ehr['round_trip_p90_ms']:.2f})",
                    flush=True,
                )
            medians = sorted(r["one_way_median_ms"] for r in ehr_runs)
            print(
                f"EHR median of {args.runs} runs: one-way (durable) {statistics.median(medians):.2f} ms "
                f"(run medians {', '.join(f'{m:.2f}' for m in medians)}), round trip "
                f"{statistics.median(r['round_trip_median_ms'] for r in ehr_runs):.2f} ms",
                flush=True,
            )
            floor = ehr_floor(Path(tmp))
            print(
                f"same-run floor, back to back in one process: FHIR validation "
                f"{floor['validation_ms']:.2f} ms, fsynced record commit {floor['commit_ms']:.2f} ms; "
                f"twice each (both ends) = {2 * (floor['validation_ms'] + floor['commit_ms']):.2f} ms",
                flush=True,
            )
            session_setup(work, args.runs, args.sessions)
            digest = hashlib.sha256(b"".join(p.read_bytes()[:64] for p in paths[:4])).hexdigest()[:12]
            print(f"(study sample digest {digest})")
        finally:
            group.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
