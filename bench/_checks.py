"""What the robustness scripts check after a deployment has been through something (kill -9, a network
partition, an hour's soak): an ETSI 014 client that records every key it is handed and fetched, both
durable key stores read back and compared, and the study and EHR helpers that tell whether a transfer
arrived once and bit-exact.

KeyStore exposes link states, pool levels by owner and the outbox, used as such; it has no listing of
rounds or of delivered keys, so those are read from the SQLite tables directly, read-only (rounds,
round_outcomes, auth, incoming, fetched). Imported as a sibling module, like _deploy.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import hashlib
import random
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import _deploy as d
import httpx

from qlinkmed.client.commands.demo import _token
from qlinkmed.client.daemon_http import ApiError
from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.content import validate
from qlinkmed.qlinkd.pool.keystore import KeyStore
from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from qlinkmed.qlinkd.testbed.readers import reader_token
from qlinkmed.qlinkd.testbed.settle import settle_stopped_stores

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/ is a package of the repository, not of the installed qlinkmed
    sys.path.insert(0, str(ROOT))
from tests.dicom_factory import make_ct_study  # noqa: E402

MASTER, SLAVE = f"pacs-{d.A}", f"pacs-{d.B}"
CLIENT_PACE_S = 0.02
"""Default pause between the client's enc_keys requests, so it does not outrun key generation."""
REFETCH_SHARE = 0.2
"""Share of fetched keys the client asks B for a second time (B must refuse)."""
T = TypeVar("T")
NOTICES_TIMEOUT_S = 30.0
"""How long the notices A owes B may take to be acknowledged before the stores are compared."""


# ---- the ETSI 014 client --------------------------------------------------------------------------------
@dataclass(slots=True)
class ClientLog:
    """Everything the SAE client saw."""

    handed: dict[str, bytes] = field(default_factory=dict)
    handed_twice: int = 0
    fetched: dict[str, bytes] = field(default_factory=dict)
    fetched_twice: int = 0
    refetch_refused: int = 0
    refetch_attempts: int = 0
    pending: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


class KeyClient(threading.Thread):
    """Master at A, slave at B, over ETSI 014 with their SAE certificates: enc_keys at A for `numbers`
    keys (a seeded draw in that range) every `pace_s`, then dec_keys at B for every key owed."""

    def __init__(
        self,
        deployment: Deployment,
        seed: int,
        *,
        pace_s: float = CLIENT_PACE_S,
        numbers: tuple[int, int] = (1, 4),
    ) -> None:
        super().__init__(name="etsi-client", daemon=True)
        self.deployment = deployment
        self.log = ClientLog()
        self.stop_handing = threading.Event()
        self.drain_deadline = 0.0
        self._rng = random.Random(seed)
        self._pace_s = pace_s
        self._numbers = numbers

    def run(self) -> None:
        enc_url = f"{self.deployment.kme_url(d.A)}/api/v1/keys/{SLAVE}/enc_keys"
        dec_url = f"{self.deployment.kme_url(d.B)}/api/v1/keys/{MASTER}/dec_keys"
        with d.sae_client(self.deployment, MASTER) as enc, d.sae_client(self.deployment, SLAVE) as dec:
            while not self.stop_handing.is_set():
                self._enc(enc, enc_url)
                self._dec_pass(dec, dec_url)
                self.stop_handing.wait(self._pace_s)
            misses = 0
            while self.log.pending and time.monotonic() < self.drain_deadline:
                if self._dec_pass(dec, dec_url):
                    misses = 0
                    continue
                misses += 1
                # A whole rotation without a key, and A owes B no notice: what is left never comes.
                if misses >= len(self.log.pending) and notices_owed(self.deployment) == 0:
                    break
                time.sleep(0.1)  # pacing retries of keys whose notice has not arrived yet

    def finish(self, drain_s: float) -> None:
        """Stop asking A for keys, fetch those still owed at B for at most `drain_s`, and end the thread."""
        self.drain_deadline = time.monotonic() + drain_s
        self.stop_handing.set()
        self.join(drain_s + 30)

    def _post(self, client: httpx.Client, url: str, body: dict[str, Any], what: str) -> httpx.Response | None:
        try:
            return client.post(url, json=body)
        except httpx.HTTPError as exc:
            self.log.errors[f"{what}: {type(exc).__name__}"] += 1
            return None

    def _enc(self, client: httpx.Client, url: str) -> None:
        response = self._post(client, url, {"number": self._rng.randint(*self._numbers)}, "enc")
        if response is None:
            return
        if response.status_code != 200:
            self.log.errors[f"enc: HTTP {response.status_code}"] += 1
            return
        for key in response.json()["keys"]:
            if key["key_ID"] in self.log.handed:
                self.log.handed_twice += 1
            self.log.handed[key["key_ID"]] = base64.b64decode(key["key"])
            self.log.pending.append(key["key_ID"])

    def _dec_pass(self, client: httpx.Client, url: str) -> int:
        """Fetch the keys owed, oldest first, until one fails (it goes to the back of the queue, so a key
        whose answer a kill cut off does not block the others); returns how many arrived."""
        got = 0
        while self.log.pending:
            key_id = self.log.pending.pop(0)
            if not self._dec_one(client, url, key_id):
                self.log.pending.append(key_id)
                break
            got += 1
        return got

    def _dec_one(self, client: httpx.Client, url: str, key_id: str) -> bool:
        response = self._post(client, url, {"key_IDs": [{"key_ID": key_id}]}, "dec")
        if response is None:
            return False
        if response.status_code != 200:
            self.log.errors[f"dec: HTTP {response.status_code}"] += 1
            return False
        for key in response.json()["keys"]:
            if key["key_ID"] in self.log.fetched:
                self.log.fetched_twice += 1
            self.log.fetched[key["key_ID"]] = base64.b64decode(key["key"])
        if self._rng.random() < REFETCH_SHARE:
            again = self._post(client, url, {"key_IDs": [{"key_ID": key_id}]}, "refetch")
            if again is not None:
                self.log.refetch_attempts += 1
                self.log.refetch_refused += again.status_code == 400
        return True


def notices_owed(deployment: Deployment) -> int:
    """Key notices A has not had acknowledged by B (-1 while A's local API does not answer)."""
    try:
        return int(d.local_get(deployment, d.A, "/v1/keys")["pools"][0]["notices_unacknowledged"])
    except (httpx.HTTPError, OSError, KeyError, IndexError, ValueError):
        return -1


# ---- the stores after the run ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class StoreView:
    last_committed: int
    pending_round: int
    next_round: int
    auth_position: int
    auth_material: bytes
    """The authentication key bytes not yet used, from `auth_position` on."""
    pool_bits_owned_by: dict[str, int]
    outbox: int
    rounds: list[tuple[int, str, int, int, str]]
    """Committed rounds: (round_id, owner, start, bytes left, SHA-256 of those bytes)."""
    committed_outcomes: set[int]
    incoming: set[str]
    fetched: set[str]


def read_store(deployment: Deployment, facility: str) -> StoreView:
    peer = d.B if facility == d.A else d.A
    path = deployment.root / "state" / facility / "keys.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT round_id, owner, start, material FROM rounds WHERE peer = ? AND committed = 1"
            " ORDER BY round_id",
            (peer,),
        ).fetchall()
        rounds = [(r, o, s, len(m), hashlib.sha256(m).hexdigest()) for r, o, s, m in rows]
        outcomes = {
            r
            for (r,) in db.execute(
                "SELECT round_id FROM round_outcomes WHERE peer = ? AND committed = 1", (peer,)
            )
        }
        auth = db.execute("SELECT material FROM auth WHERE peer = ?", (peer,)).fetchone()[0]
        incoming = {k for (k,) in db.execute("SELECT key_id FROM incoming")}
        fetched = {k for (k,) in db.execute("SELECT key_id FROM fetched")}
    finally:
        db.close()
    store = KeyStore.open(path)
    try:
        state = store.link_state(peer)
        owned = {owner: store.pool_bits(peer, owner=owner) for owner in (d.A, d.B)}
        outbox = len(store.outbox(peer))
    finally:
        store.close()
    return StoreView(
        last_committed=state.last_committed,
        pending_round=state.pending_round,
        next_round=state.next_round,
        auth_position=state.auth_position,
        auth_material=bytes(auth),
        pool_bits_owned_by=owned,
        outbox=outbox,
        rounds=rounds,
        committed_outcomes=outcomes,
        incoming=incoming,
        fetched=fetched,
    )


def compare(view_a: StoreView, view_b: StoreView) -> list[str]:
    """What differs between the two ends' stores (empty: the pools are identical)."""
    out = []
    if view_a.rounds != view_b.rounds:
        only_a = sorted(set(view_a.rounds) - set(view_b.rounds))[:5]
        only_b = sorted(set(view_b.rounds) - set(view_a.rounds))[:5]
        out.append(f"committed rounds differ: only at A {only_a}, only at B {only_b}")
    if view_a.last_committed != view_b.last_committed:
        out.append(f"last committed: A {view_a.last_committed}, B {view_b.last_committed}")
    common = min(view_a.last_committed, view_b.last_committed)
    a_out = {r for r in view_a.committed_outcomes if r <= common}
    b_out = {r for r in view_b.committed_outcomes if r <= common}
    if a_out != b_out:
        out.append(f"committed round ids differ: {sorted(a_out ^ b_out)[:10]}")
    behind, ahead = sorted((view_a, view_b), key=lambda v: v.auth_position)
    lead = ahead.auth_position - behind.auth_position
    if behind.auth_material[lead:] != ahead.auth_material:
        where = f"A at {view_a.auth_position}, B at {view_b.auth_position}"
        out.append(f"authentication key: {where}, bytes differ")
    if view_a.pool_bits_owned_by != view_b.pool_bits_owned_by:
        out.append(f"pool bits by owner: A {view_a.pool_bits_owned_by}, B {view_b.pool_bits_owned_by}")
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyCheck:
    """The ETSI 014 client's record against both stores, once the processes have stopped."""

    keys_handed: int
    """Keys A's KME handed to the master SAE."""
    keys_fetched: int
    """Keys B's KME delivered to the slave SAE."""
    keys_unfetched: int
    """Keys handed out at A that the client never got from B."""
    unfetched_fetched_at_b: int
    """Of those, how many B's store records as delivered (an answer lost to a kill: at most once)."""
    handed_twice: int
    """Key IDs A handed out more than once (must be 0)."""
    fetched_twice: int
    """Key IDs B delivered more than once (must be 0)."""
    refetch_asked: int
    """Second fetches of an already delivered key the client made."""
    refetch_refused: int
    """Of those, how many B refused (must be all)."""
    mismatched: int
    """Keys fetched at B whose bytes differ from A's (must be 0)."""
    shared_bytes: int
    """Pairs of distinct keys with equal bytes (must be 0)."""
    client_errors: dict[str, int]
    """What the client met (a short pool, a key whose notice had not arrived yet)."""
    pools_equal: bool
    """Both stores hold the same committed rounds, bytes included, and one authentication key stream."""
    pool_differences: list[str]
    committed_rounds: int
    """Committed rounds still holding key, as A sees them."""
    last_committed: dict[str, int]
    """Highest committed round id per facility."""
    settled_at_stop: list[int] = field(default_factory=list)
    """Rounds pending at either end when the processes stopped, settled as the next hello would."""

    @property
    def ok(self) -> bool:
        return (
            self.pools_equal
            and self.handed_twice == self.fetched_twice == self.mismatched == self.shared_bytes == 0
            and self.refetch_refused == self.refetch_asked
            and self.keys_unfetched == self.unfetched_fetched_at_b
        )


def settle_and_compare(started: d.Started, client: KeyClient, drain_s: float) -> KeyCheck:
    """Stop the client (it drains the keys owed at B), wait for A's notices to be acknowledged, stop the
    processes (SIGTERM), settle the stores as the next hello would and compare them with what the client
    saw."""
    client.finish(drain_s)
    deployment = started.deployment
    with contextlib.suppress(TimeoutError):
        d.wait_for(lambda: notices_owed(deployment) == 0, NOTICES_TIMEOUT_S, "notices acknowledged")
    started.group.stop_all()
    settled = settle_stopped_stores(deployment)
    views = {f: read_store(deployment, f) for f in (d.A, d.B)}
    differences = compare(views[d.A], views[d.B])
    log = client.log
    unfetched = [k for k in log.handed if k not in log.fetched]
    materials = list(log.handed.values())
    return KeyCheck(
        keys_handed=len(log.handed),
        keys_fetched=len(log.fetched),
        keys_unfetched=len(unfetched),
        unfetched_fetched_at_b=sum(k in views[d.B].fetched for k in unfetched),
        handed_twice=log.handed_twice,
        fetched_twice=log.fetched_twice,
        refetch_asked=log.refetch_attempts,
        refetch_refused=log.refetch_refused,
        mismatched=sum(log.handed.get(k) != v for k, v in log.fetched.items()),
        shared_bytes=len(materials) - len(set(materials)),
        client_errors=dict(log.errors),
        pools_equal=not differences,
        pool_differences=differences,
        committed_rounds=len(views[d.A].rounds),
        last_committed={f: views[f].last_committed for f in views},
        settled_at_stop=settled,
    )


# ---- studies and EHR messages ---------------------------------------------------------------------------
def data_targets(deployment: Deployment) -> tuple[DataTarget, DataTarget]:
    """The data API of A with its local API token (it sends), and of B with its all-data reader's user
    token (the facility token no longer reads the inbox)."""
    return (
        DataTarget(deployment.local_url(d.A), _token(deployment, d.A)),
        DataTarget(deployment.local_url(d.B), reader_token(deployment, d.B)),
    )


def make_study(folder: Path, megabytes: float, seed: int) -> list[tuple[Path, Any]]:
    """A synthetic CT study of about `megabytes` MB (10^6 bytes) in `folder`: (path, ContentInfo) per file."""
    slice_bytes = len(make_ct_study(1, 512, 512, seed=seed)[0])
    count = max(1, round(megabytes * 1e6 / slice_bytes))
    folder.mkdir(parents=True)
    entries = []
    for i, data in enumerate(make_ct_study(count, 512, 512, seed=seed)):
        path = folder / f"ct{i:05d}.dcm"
        path.write_bytes(data)
        entries.append((path, validate(path.name, data)))
    return entries


def inbox_entry(b: DataTarget, tid: str) -> dict[str, Any] | None:
    """B's inbox entry for a transfer, with its file list (None: B has no record of it)."""
    status, body = b.json("GET", f"/v1/inbox/{tid}")
    return body if status == 200 else None


def owned_bits(target: DataTarget) -> int:
    """Pool bits the facility may hand out as master (0 while its local API does not answer)."""
    try:
        status, body = target.json("GET", "/v1/status")
    except ApiError:
        return 0
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


def outgoing_states(a: DataTarget) -> dict[str, str] | None:
    """Transfer id -> state of every transfer A has queued (None while A does not answer)."""
    try:
        status, body = a.json("GET", "/v1/transfers")
    except ApiError:
        return None
    return {t["transfer_id"]: t["state"] for t in body["transfers"]} if status == 200 else None


def outgoing_state(a: DataTarget, tid: str) -> str:
    """A's state of one transfer: ``unknown`` while A does not answer, ``missing`` if it has no record."""
    states = outgoing_states(a)
    return "unknown" if states is None else states.get(tid, "missing")


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """How one transfer arrived at B."""

    transfer_id: str
    state: str
    """B's inbox state (``delivered``), or ``missing``."""
    bit_exact: int
    """Files whose bytes from B's inbox equal the originals (SHA-256 and bytes)."""
    files: int
    inbox_records: int
    """B's inbox records for the transfer (exactly one)."""
    received_lines: int
    """transfer_received records in B's audit log (exactly one)."""
    delivered_lines: int
    """transfer_delivered records in A's audit log (exactly one: more means A sent it again)."""

    @property
    def once_and_exact(self) -> bool:
        return (
            self.state == "delivered"
            and self.bit_exact == self.files
            and self.inbox_records == self.received_lines == self.delivered_lines == 1
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Records:
    """How many records B and A hold of each transfer: read once for many transfers. (The data API's
    listings return the newest 1,000 transfers only, so the counts come from the database and the audit
    logs.)"""

    inbox: collections.Counter[str]
    """Transfer id -> B's inbox records for it (transfers.sqlite3, read-only)."""
    received: collections.Counter[str]
    """Transfer id -> transfer_received lines in B's audit log."""
    delivered: collections.Counter[str]
    """Transfer id -> transfer_delivered lines in A's audit log."""
    stored_at: dict[str, float]
    """Transfer id -> when B's inbox held it durably (epoch seconds; the audit record's stored_at, taken
    when the inbox record's commit had returned)."""


def read_records(deployment: Deployment) -> Records:
    path = deployment.root / "state" / d.B / "transfers.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        inbox = collections.Counter(tid for (tid,) in db.execute("SELECT transfer_id FROM incoming"))
    finally:
        db.close()
    received = [r for r in d.read_audit(deployment, d.B) if r.get("event") == "transfer_received"]
    return Records(
        inbox=inbox,
        received=collections.Counter(r["transfer"] for r in received),
        delivered=delivered_at_a(deployment),
        stored_at={
            r["transfer"]: dt.datetime.fromisoformat(r["stored_at"]).timestamp()
            for r in received
            if "stored_at" in r
        },
    )


def delivered_at_a(deployment: Deployment) -> collections.Counter[str]:
    """Transfer id -> transfer_delivered lines in A's audit log (B confirmed the transfer)."""
    return collections.Counter(
        r["transfer"] for r in d.read_audit(deployment, d.A) if r.get("event") == "transfer_delivered"
    )


def wait_delivered(deployment: Deployment, ids: set[str], timeout: float, every: float) -> float | None:
    """Seconds until A's audit log records every transfer in `ids` delivered (None: not within `timeout`).
    `every`: how often the log is read again (it grows with every transfer the deployment has made)."""
    start = time.monotonic()
    while not ids <= delivered_at_a(deployment).keys():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(every)
    return time.monotonic() - start


def check_arrival(b: DataTarget, tid: str, originals: list[bytes], records: Records) -> Arrival:
    """Compare B's copy of a transfer with the original files, and count B's records of it."""
    entry = inbox_entry(b, tid)
    exact = 0
    if entry is not None and entry["state"] == "delivered":
        for f, original in zip(entry["file_list"], originals, strict=True):
            status, data, _ = b.request("GET", f"/v1/inbox/{tid}/files/{f['index']}", timeout=120.0)
            digest = hashlib.sha256(data).hexdigest()
            exact += status == 200 and digest == f["sha256"] and data == original
    return Arrival(
        transfer_id=tid,
        state="missing" if entry is None else entry["state"],
        bit_exact=exact,
        files=len(originals),
        inbox_records=records.inbox[tid],
        received_lines=records.received[tid],
        delivered_lines=records.delivered[tid],
    )


def tracebacks(started: d.Started) -> dict[str, str]:
    """Each process log's first traceback, with some context (empty: none)."""
    found = {}
    for name, child in started.group.children.items():
        log = child.log()
        start = log.find("Traceback")
        if start >= 0:
            found[name] = log[max(0, start - 800) : start + 3000]
    return found


# ---- the processes --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Resident memory and open file descriptors of each running process at one moment (Linux /proc)."""

    at_s: float
    """Seconds since the load started."""
    rss_mib: dict[str, float]
    fds: dict[str, int]


def usage(group: ProcessGroup, at_s: float) -> Usage:
    rss, fds = {}, {}
    for name, child in group.children.items():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[name] = int(line.split()[1]) / 1024
            fds[name] = len(list(Path(f"/proc/{child.process.pid}/fd").iterdir()))
    return Usage(at_s=at_s, rss_mib=rss, fds=fds)
