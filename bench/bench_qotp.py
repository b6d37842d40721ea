"""QOTPE cost against the number of records (issue 18, Build 5), on synthetic tables shaped like seed
paper 003's three data sets, with the numpy path (production) and the qiskit-aer circuit path (24 qubits
a circuit: the cross-check) side by side.

    .venv/bin/python bench/bench_qotp.py                       # table + docs/img/qotp_cost.png
    .venv/bin/python bench/bench_qotp.py --records 100 1000 --runs 3 --no-plot
    .venv/bin/python bench/bench_qotp.py --only-at-rest            # the daemon's at-rest cost per message

The tables are generated here, seeded, as CSV text (what an EHR export of them looks like), with the
columns of the public sets the paper used: a COVID-19 surveillance line list (date, county, state,
fips, cases, deaths, age group, sex, hospitalised, ICU), TCGA glioma grading (grade, gender, age at
diagnosis, race and 20 mutation flags) and the Pima diabetes set (8 measurements and the outcome).
Their values are synthetic; only the row sizes matter for the cost. Key material comes from os.urandom
here (the daemon cuts it from the key pool: 2 key bytes per data byte). Each figure is the median of
--runs runs of encrypt + decrypt of the whole table.

Then the at-rest cost of one EHR message in the daemon's own path (`--messages`, `--message-runs`), on a
real key store (keys.sqlite3: WAL, synchronous=FULL, secure_delete) and a real inbox directory in a
temporary folder: "qotpe" is what the receiver does with a pool that can pay (`RestKeys.cut_pad`: the pad
carved in one transaction with its notice, then `Inbox.store_ehr`: XOR alpha, HMAC-SHA256, written to a
temporary name, fsynced, renamed, directory fsynced); "aead" is the fallback beside it in the same run
(the HKDF key kept in the key store, the same write of an AES-256-GCM blob). Message sizes: a small HL7
ORU (tests/data), then 4 KiB, 64 KiB and 1 MiB bodies. Median of the runs; the first run of each is
discarded (file-system and SQLite warm-up). The temporary folder is on the file system of --tmp.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qlinkmed.qcore.qotp import CIRCUIT_MAX_BITS, QotpKey, circuit_encrypt, decrypt, encrypt
from qlinkmed.qlinkd.content import FORM_AEAD, qotp_at_rest
from qlinkmed.qlinkd.content.kinds import ContentInfo, ContentKind
from qlinkmed.qlinkd.dataplane.inbox import Inbox, at_rest_key
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.records import TransferRecords
from qlinkmed.qlinkd.dataplane.rest_keys import RestKeys
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.pool.kme import StoreKeyManager

ROOT = Path(__file__).resolve().parents[1]
LINK_RATE_BPS = 698_000
"""The sustained key rate of a 10 km BB84 link measured in docs/benchmarks.md (issue 16): what the pad
really costs is key, two bits for every data bit."""
CIRCUIT_RECORDS = (1, 3, 10)
"""The circuit path runs one circuit per CIRCUIT_MAX_BITS / 8 bytes: measured on a few records, and its
per-byte cost extrapolated in the table (marked)."""


def covid(rng: np.random.Generator, n: int) -> str:
    out = io.StringIO()
    out.write("date,county,state,fips,cases,deaths,age_group,sex,hospitalised,icu\n")
    for i in range(n):
        out.write(
            f"2020-{3 + i % 10:02d}-{1 + i % 28:02d},County{rng.integers(1, 3000)},ST{rng.integers(1, 51)},"
            f"{rng.integers(1000, 57000):05d},{rng.integers(0, 5000)},{rng.integers(0, 200)},"
            f"{rng.choice(['0-17', '18-49', '50-64', '65+'])},{rng.choice(['F', 'M'])},"
            f"{rng.choice(['Yes', 'No'])},{rng.choice(['Yes', 'No'])}\n"
        )
    return out.getvalue()


def glioma(rng: np.random.Generator, n: int) -> str:
    genes = [f"G{k}" for k in range(20)]
    out = io.StringIO()
    out.write("grade,gender,age_at_diagnosis,race," + ",".join(genes) + "\n")
    for _ in range(n):
        flags = ",".join(str(int(b)) for b in rng.integers(0, 2, len(genes)))
        out.write(
            f"{rng.choice(['LGG', 'GBM'])},{rng.choice(['Male', 'Female'])},{rng.uniform(14, 89):.2f},"
            f"{rng.choice(['white', 'black or african american', 'asian'])},{flags}\n"
        )
    return out.getvalue()


def diabetes(rng: np.random.Generator, n: int) -> str:
    out = io.StringIO()
    out.write("pregnancies,glucose,blood_pressure,skin_thickness,insulin,bmi,pedigree,age,outcome\n")
    for _ in range(n):
        out.write(
            f"{rng.integers(0, 17)},{rng.integers(44, 199)},{rng.integers(24, 122)},{rng.integers(7, 99)},"
            f"{rng.integers(14, 846)},{rng.uniform(18, 67):.1f},{rng.uniform(0.08, 2.42):.3f},"
            f"{rng.integers(21, 81)},{rng.integers(0, 2)}\n"
        )
    return out.getvalue()


TABLES: dict[str, Callable[[np.random.Generator, int], str]] = {
    "covid19": covid,
    "tcga_glioma": glioma,
    "diabetes": diabetes,
}


def numpy_seconds(data: bytes) -> float:
    key = QotpKey.from_material(os.urandom(2 * len(data)))
    started = time.perf_counter()
    cipher = encrypt(data, key)
    plain = decrypt(cipher, key)
    elapsed = time.perf_counter() - started
    if plain != data:
        raise SystemExit("decrypt(encrypt(x)) != x")
    return elapsed


def circuit_seconds(data: bytes) -> float:
    """Encrypt with the circuit path, CIRCUIT_MAX_BITS at a time, checked against the numpy path."""
    step = CIRCUIT_MAX_BITS // 8
    started = time.perf_counter()
    for at in range(0, len(data), step):
        chunk = data[at : at + step]
        key = QotpKey.from_material(os.urandom(2 * len(chunk)))
        if circuit_encrypt(chunk, key) != encrypt(chunk, key):
            raise SystemExit("the circuit and numpy paths disagree")
    return time.perf_counter() - started


HL7 = (ROOT / "tests" / "data" / "oru_r01.hl7").read_bytes()
ROUND_BYTES = 64 << 10
"""The pool's rounds in the at-rest runs: a pad spans as many rows as it would in a pool of such rounds
(a 1 MiB message's 2 MiB pad: 33 rows deleted or trimmed in its transaction)."""
ME, PEER = "hospital-b", "hospital-a"


def _message(size: int) -> bytes:
    """An HL7-shaped body of `size` bytes (the ORU's segments repeated); the ORU itself for size 0."""
    if size == 0:
        return HL7
    return (HL7 * (size // len(HL7) + 1))[:size]


class _Receiver:
    """A receiving daemon's at-rest path on real files: key store with one large round this end owns,
    records, inbox."""

    def __init__(self, root: Path, pool_bytes: int) -> None:
        self.store = KeyStore.open(root / "keys.sqlite3")
        self.store.init_auth(PEER, os.urandom(96))
        for i in range(-(-pool_bytes // ROUND_BYTES)):
            round_id = 2 * (i + 1)  # the even rounds: this end's
            self.store.note_round_started(PEER, round_id)
            self.store.store_pending(
                PEER, round_id, owner=ME, key=os.urandom(ROUND_BYTES), auth_refill=os.urandom(48)
            )
            self.store.commit(PEER, round_id)
        manager = StoreKeyManager(self.store, facility=ME, local_saes=(), sae_to_peer={})
        self.keys = RestKeys(ME, manager, self.store)
        self.records = TransferRecords.open(root / "transfers.sqlite3")
        self.inbox = Inbox(root / "inbox", self.records, facility=ME, rest_keys=self.keys)
        self.session = os.urandom(32)

    def close(self) -> None:
        self.inbox.close_all()
        self.records.close()
        self.store.close()

    def store_one(self, body: bytes, form: str) -> tuple[float, float]:
        """Seconds for one message's at-rest step in `form`, as the receiver runs it, and of them the
        key's (the pad cut, or the AEAD key kept)."""
        tid = str(uuid.uuid4())
        digest = hashlib.sha256(body).hexdigest()
        manifest = Manifest(
            transfer_id=tid,
            sender=PEER,
            recipient=ME,
            kind=TransferKind.EHR,
            files=(FileEntry("m.hl7", len(body), digest, "hl7"),),
            created=time.time(),
        )
        info = ContentInfo(kind=ContentKind.HL7, size=len(body), sha256=digest)
        started = time.perf_counter()
        if form == qotp_at_rest.FORM_QOTPE:
            key = self.keys.cut_pad(PEER, tid, len(body))
        else:
            key = self.keys.keep(PEER, tid, FORM_AEAD, at_rest_key(self.session, tid))
        keyed = time.perf_counter() - started
        self.inbox.store_ehr(manifest, body, info, form=form, key=key)
        elapsed = time.perf_counter() - started
        if Inbox.open_located(self.inbox.root / tid / "0", key, digest) != body:
            raise SystemExit("the stored message does not open to itself")
        return elapsed, keyed


def at_rest_costs(sizes: list[int], runs: int, tmp: Path | None) -> None:
    print()
    print("at rest, per EHR message, daemon path (key store + durable file), median of runs:")
    print(
        f"{'message':>10} {'bytes':>9} {'qotpe (ms)':>11} {'of it pad':>10} {'aead (ms)':>10}"
        f" {'of it key':>10} {'ratio':>6} {'pad (bits)':>11}"
    )
    for size in sizes:
        body = _message(size)
        need = qotp_at_rest.pad_bytes(len(body)) * (runs + 1)
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            receiver = _Receiver(Path(folder), need)
            try:
                timings: dict[str, list[tuple[float, float]]] = {
                    qotp_at_rest.FORM_QOTPE: [],
                    FORM_AEAD: [],
                }
                for _ in range(runs + 1):  # interleaved: both forms see the same disk and load
                    for form, seconds in timings.items():
                        seconds.append(receiver.store_one(body, form))
            finally:
                receiver.close()
        q, qk, a, ak = (
            statistics.median(t[part] for t in timings[f][1:])
            for f in (qotp_at_rest.FORM_QOTPE, FORM_AEAD)
            for part in (0, 1)
        )
        label = "ORU" if size == 0 else f"{size // 1024} KiB"
        print(
            f"{label:>10} {len(body):>9,} {q * 1e3:>11.2f} {qk * 1e3:>10.2f} {a * 1e3:>10.2f}"
            f" {ak * 1e3:>10.2f} {q / a:>6.2f} {8 * qotp_at_rest.pad_bytes(len(body)):>11,}"
        )
    print(
        f"qotpe: pad cut (one key-store transaction, rounds of {ROUND_BYTES >> 10} KiB) + XOR + HMAC-SHA256"
    )
    print("       + durable write;")
    print("aead: HKDF key kept in the key store (one transaction) + AES-256-GCM + the same durable write")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, nargs="+", default=[10, 100, 1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "qotp_cost.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--messages", type=int, nargs="*", default=[0, 4096, 65536, 1 << 20])
    parser.add_argument("--message-runs", type=int, default=15)
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the at-rest runs' files")
    parser.add_argument("--only-at-rest", action="store_true", help="skip the table and circuit figures")
    args = parser.parse_args(argv)
    if args.only_at_rest:
        at_rest_costs(args.messages, args.message_runs, args.tmp)
        return 0
    rng = np.random.default_rng(args.seed)
    # Warm the circuit path once (qiskit's import and the simulator's first run are not per-record costs).
    circuit_seconds(b"abc")
    results: dict[str, list[tuple[int, int, float]]] = {}
    circuit: dict[str, float] = {}
    print(
        f"{'table':<12} {'records':>8} {'bytes':>11} {'numpy enc+dec':>14} {'MB/s':>8} {'circuit (est.)':>15}"
        f" {'key (Mbit)':>11} {'link time':>10}"
    )
    for name, make in TABLES.items():
        sample = make(rng, max(CIRCUIT_RECORDS)).encode()
        per_byte = statistics.median(circuit_seconds(sample[: len(sample) // 3]) for _ in range(3)) / (
            len(sample) // 3
        )
        circuit[name] = per_byte
        for n in args.records:
            data = make(rng, n).encode()
            seconds = statistics.median(numpy_seconds(data) for _ in range(args.runs))
            results.setdefault(name, []).append((n, len(data), seconds))
            print(
                f"{name:<12} {n:>8,} {len(data):>11,} {seconds * 1e3:>11.3f} ms"
                f" {len(data) / seconds / 1e6:>8.0f}"
                f" {per_byte * len(data):>13.1f} s {16 * len(data) / 1e6:>11.2f}"
                f" {16 * len(data) / LINK_RATE_BPS:>8.1f} s"
            )
    rate = f"{LINK_RATE_BPS / 1e3:.0f} kbit/s"
    print(f"key: 2 bits per data bit; link time: that key at {rate} (10 km BB84)")
    print(
        f"circuit path: measured on {max(CIRCUIT_RECORDS)} records, one {CIRCUIT_MAX_BITS}-qubit circuit"
        f" per {CIRCUIT_MAX_BITS // 8} bytes; (est.) = per byte x size"
    )
    if not args.no_plot:
        plot(results, circuit, args.out)
        print(f"plot: {args.out}")
    if args.messages:
        at_rest_costs(args.messages, args.message_runs, args.tmp)
    return 0


def plot(results: dict[str, list[tuple[int, int, float]]], circuit: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in results.items():
        records = [r[0] for r in rows]
        (line,) = ax.plot(records, [r[2] for r in rows], marker="o", label=f"{name}: numpy")
        ax.plot(
            records,
            [circuit[name] * r[1] for r in rows],
            linestyle="--",
            color=line.get_color(),
            label=f"{name}: circuit (extrapolated)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records")
    ax.set_ylabel("encrypt + decrypt (s)")
    ax.set_title("QOTPE cost against table size (median of runs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
