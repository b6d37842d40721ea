"""Port fuzzer: malformed, truncated, oversized and random input to every listening port of a running
deployment, while the honest link keeps distilling key.

    .venv/bin/python bench/fuzz_ports.py                       # 10,000 inputs
    .venv/bin/python bench/fuzz_ports.py --frames 2000 --json

One "frame" is one hostile input on a fresh connection: a length-prefixed frame on the quantum channel, a
websocket frame or HTTP request on the classical port, an HTTP request on the local API or the ETSI 014
KME, or bytes that are not even TLS. The ports: the quantum channel (the channel service, mutual TLS with
a facility certificate), facility B's classical port (websocket over mutual TLS; B is Bob, so the accepted
direction is hospital-a's certificate), both local APIs (plain HTTP) and both KMEs (mutual TLS).

Two phases. Phase 1 mixes every category that cannot touch the honest link, in a seeded random order,
several connections in flight; every --check-every inputs it checks that the three processes are alive
and that facility A has committed a new round since the last check ("other links unaffected"). The
classical port is fuzzed there without ever completing a websocket upgrade as hospital-a: no TLS, TLS
without a certificate, TLS then non-HTTP bytes, malformed HTTP, an upgrade request missing its headers,
and complete upgrades with a certificate that is not the peer's (an SAE's, the channel's, B's own). The
quantum channel gets a valid ChannelHello only for a made-up peer, so the honest parties' slots are never
replaced. Phase 2 is what a peer holding hospital-a's real certificate can do: complete the upgrade and
send a bad websocket frame. A verified peer connection replaces the older one by design, so each of
these knocks the honest link down until A redials; they run one at a time, and afterwards the script
checks that the link recovers and commits rounds again.

The daemons' logs are then read for a logged reason per closed connection: the channel service logs one
line per refused channel connection, daemon B one per refused classical certificate and one per closed
link. HTTP-level refusals (400/404/405/413 answers) are answered, not logged; TLS handshake failures are
not logged by asyncio at all; both are reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import random
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

import _deploy as d

from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, encode_frame
from qlinkmed.qlinkd.testbed.deployment import Deployment

HOST = "127.0.0.1"
READ_TIMEOUT_S = 1.5
"""How long an input waits for the server's answer or close before giving up (outcome "kept-open")."""
PROGRESS_TIMEOUT_S = 30.0
"""How long a check waits for facility A to commit a new round before it counts a stall."""
IN_FLIGHT = 8
CHANNEL_CONNECTIONS_PER_LINK = 2 * IN_FLIGHT
"""The channel service caps each facility's connections (2 per link by default); the fuzzer holds up to
IN_FLIGHT at once under one facility's certificate, and its inputs are meant for the frame parser, not
for that cap (tests/qlinkd/channel tests the cap), so its deployment raises it."""
WS_SHARE = 0.02
"""Share of the inputs spent in phase 2 (each one replaces the honest classical connection)."""
CLOSE_PATTERNS = {
    "channel": ("closing channel connection", ") lost: "),
    d.B: ("classical connection refused", "link to hospital-a closed"),
}
LINK_CLOSED = "link to hospital-a closed: "
"""Log lines that give the reason a connection was closed, per process."""


@dataclass(slots=True)
class Tally:
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: dict[str, collections.Counter[str]] = field(default_factory=dict)

    def add(self, category: str, outcome: str) -> None:
        self.sent[category] += 1
        self.outcomes.setdefault(category, collections.Counter())[outcome] += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class FuzzReport:
    frames: int
    """Inputs sent, both phases."""
    seconds: float
    """Wall time of the whole fuzz."""
    sent: dict[str, int]
    """Inputs per "<port>/<category>"."""
    outcomes: dict[str, dict[str, int]]
    """What the server did with each category's inputs."""
    crashes: int
    """Processes that exited during the fuzz (must be 0)."""
    alive: dict[str, bool]
    """Each process at the end."""
    checks: int
    """Liveness and progress checks made in phase 1."""
    stalls: int
    """Checks in phase 1 that saw no new committed round within PROGRESS_TIMEOUT_S (must be 0)."""
    rounds_committed: int
    """Rounds facility A committed from the start of the fuzz to the end of the recovery check."""
    key_bits: int
    """Final key bits of the rounds A established over the same span (its audit log)."""
    recovered_s: float | None
    """After phase 2: seconds until A committed a new round (None: it did not within the timeout)."""
    logged_closes: dict[str, int]
    """Log lines giving a reason for a closed connection, by "<process>: <pattern>"."""
    link_close_reasons: dict[str, int]
    """Daemon B's "link to hospital-a closed" lines by reason (phase 2, and the honest link replaced)."""
    expected_channel_closes: int
    """Phase 1 channel inputs that passed TLS and must each have produced a logged refusal."""
    ws_sessions: int
    """Phase 2 inputs that reached the websocket data phase and must each close the link with a reason."""
    parse_error_tracebacks: int
    """ERROR lines with a traceback that aiohttp wrote for HTTP requests it could not parse."""
    other_tracebacks: int
    """Any other log line carrying a traceback, all processes (any is a bug)."""


# ---- byte builders --------------------------------------------------------------------------------------
def _prefixed(frame: bytes, announced: int | None = None) -> bytes:
    return (len(frame) if announced is None else announced).to_bytes(4, "big") + frame


def _ws_frame(
    payload: bytes, rng: random.Random, *, opcode: int = 2, mask: bool = True, announce: int = -1
) -> bytes:
    size = len(payload) if announce < 0 else announce
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + size.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = rng.randbytes(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _channel_hello(facility: str, peer: str, role: str | None = None) -> bytes:
    alice = min(facility, peer)
    role = role or ("alice" if facility == alice else "bob")
    return encode_frame(lm.ChannelHello(facility=facility, peer=peer, role=role, protocol="bb84"), 0)


def _truncated_hello(rng: random.Random, me: str) -> bytes:
    frame = _prefixed(_channel_hello(me, d.B if me == d.A else d.A))
    return frame[: rng.randrange(4, len(frame))]


def _wrong_version(frame: bytes, rng: random.Random) -> bytes:
    # encode_frame starts with field 1 (version) as the varint 0x08 0x01; give it another version.
    return b"\x08" + bytes([rng.choice([0, 2, 3, 0x7F])]) + frame[2:]


def _http(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _upgrade(path: str, rng: random.Random, *, complete: bool = True) -> bytes:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket"} if complete else {}
    headers["Sec-WebSocket-Version"] = "13"
    headers["Sec-WebSocket-Key"] = base64.b64encode(rng.randbytes(16)).decode()
    return _http("GET", path, headers)


def _malformed_http(rng: random.Random) -> bytes:
    choices = [
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET /v1/\x00status HTTP/1.1\r\n\r\n",
        b"POST /v1/status HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-Fold: a\r\n continued\r\n\r\n",
        b"\xff\xfe GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\n\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /" + rng.randbytes(40).replace(b" ", b"x") + b" HTTP/1.1\r\n\r\n",
    ]
    return rng.choice(choices)


def _huge_headers(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return _http("GET", "/v1/status", {"X-Big": "a" * rng.randrange(9_000, 120_000)})
    if kind == 1:
        return _http("GET", "/v1/status", {f"X-H{i}": "v" for i in range(rng.randrange(120, 2_000))})
    return _http("GET", "/" + "p" * rng.randrange(9_000, 80_000))


def _bad_path(rng: random.Random) -> bytes:
    method = rng.choice(["GET", "POST", "DELETE", "PUT", "OPTIONS", "PATCH", "TRACE", "BREW"])
    path = rng.choice(
        [
            "/v1/status/../../etc/passwd",
            "/%2e%2e/%2e%2e/",
            "/v1/keys?" + "a=1&" * 200,
            "/v1/" + "%ff" * 50,
            "/metrics/" + str(rng.randrange(10**9)),
            "/v2/status",
            "//",
            "*",
            "/v1/status",
        ]
    )
    return _http(method, path, body=rng.randbytes(rng.choice([0, 10, 5_000, 70_000])))


def _kme_request(deployment: Deployment, facility: str, rng: random.Random) -> bytes:
    other = d.B if facility == d.A else d.A
    slave = f"pacs-{other}"
    enc, dec = f"/api/v1/keys/{slave}/enc_keys", f"/api/v1/keys/{slave}/dec_keys"
    bodies = [
        (enc, b"{not json"),
        (enc, b"[1, 2, 3]"),
        (enc, json.dumps({"number": 0}).encode()),
        (enc, json.dumps({"number": 10**6}).encode()),
        (enc, json.dumps({"number": "1"}).encode()),
        (enc, json.dumps({"number": 1, "size": 7}).encode()),
        (enc, json.dumps({"number": 1, "size": 10**9}).encode()),
        (enc, json.dumps({"number": 1, "extension_mandatory": [{"x": 1}]}).encode()),
        (enc, json.dumps({"number": 1, "additional_slave_SAE_IDs": ["x"]}).encode()),
        (enc, b"\xff\xfe\x00"),
        (enc, b"{" * 70_000),
        ("/api/v1/keys/nobody/enc_keys", b"{}"),
        (dec, json.dumps({"key_IDs": "x"}).encode()),
        (dec, json.dumps({"key_IDs": [{"key_ID": "not-a-uuid"}]}).encode()),
        (dec, json.dumps({"key_IDs": [{"key_ID": "1"}] * 300}).encode()),
        ("/api/v1/keys/" + "x" * 3000 + "/status", b""),
        (enc + "?number=abc&size=-1", b""),
    ]
    path, body = rng.choice(bodies)
    return _http("POST" if body else "GET", path, {"Content-Type": "application/json"}, body)


# ---- one connection -------------------------------------------------------------------------------------
async def _exchange(
    port: int, context: ssl.SSLContext | None, payload: bytes, *, handshake: bytes = b""
) -> str:
    """Connect, send, and report what the server did: "http-<status>", "closed", "reset", "tls-refused",
    "ws-close-<code>" or "kept-open". `handshake` (an HTTP upgrade) is sent first and must be answered
    with 101 before `payload` goes out."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=context, server_hostname=HOST if context else None), 10.0
        )
    except ssl.SSLError:
        return "tls-refused"
    except (OSError, TimeoutError):
        return "connect-failed"
    try:
        if handshake:
            writer.write(handshake)
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S * 4)
            if not answer.startswith(b"HTTP/1.1 101"):
                return "http-" + answer[9:12].decode(errors="replace")
        writer.write(payload)
        await writer.drain()
        if handshake:
            return await _ws_outcome(reader)
        data = await asyncio.wait_for(reader.read(4096), READ_TIMEOUT_S)
        if data.startswith(b"HTTP/1."):
            return "http-" + data[9:12].decode(errors="replace")
        return "closed" if not data else "answered"
    except TimeoutError:
        return "kept-open"
    except ssl.SSLError:
        return "tls-refused"
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
        return "reset"
    finally:
        writer.close()
        with contextlib.suppress(TimeoutError, ssl.SSLError, ConnectionError, OSError):
            await asyncio.wait_for(writer.wait_closed(), 2.0)


async def _ws_outcome(reader: asyncio.StreamReader) -> str:
    """Read the server's websocket frames (its Hello may come first) up to its close frame: "ws-close-<code>",
    or "closed" if the connection ends without one."""
    while True:
        head = await asyncio.wait_for(reader.read(2), READ_TIMEOUT_S)
        if len(head) < 2:
            return "closed"
        size = head[1] & 0x7F
        if size >= 126:
            size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
        body = await asyncio.wait_for(reader.readexactly(size), READ_TIMEOUT_S)
        if head[0] & 0x0F == 8:
            return f"ws-close-{int.from_bytes(body[:2], 'big') if len(body) >= 2 else 0}"


async def _plain(port: int, payload: bytes) -> str:
    return await _exchange(port, None, payload)


# ---- the categories -------------------------------------------------------------------------------------
Case = Callable[[random.Random], Awaitable[str]]


def phase1_cases(deployment: Deployment) -> dict[str, Case]:
    ports = deployment.ports
    ctx = {
        name: d.tls_context(deployment, name) for name in (d.A, d.B, "channel", f"pacs-{d.A}", f"ehr-{d.B}")
    }
    nocert = d.tls_context(deployment, None)
    qport, cport = ports["channel.listen"], ports[f"{d.B}.classical"]

    def facility(rng: random.Random) -> str:
        return rng.choice([d.A, d.B])

    def fake_peer(rng: random.Random) -> str:
        return rng.choice(["fuzz-peer", "aaa-fuzz", "zzz-fuzz"])

    def q(build: Callable[[random.Random, str], bytes]) -> Case:
        async def case(rng: random.Random) -> str:
            me = facility(rng)
            return await _exchange(qport, ctx[me], build(rng, me))

        return case

    cases: dict[str, Case] = {
        "quantum/plain-tcp": lambda rng: _plain(qport, rng.randbytes(rng.randrange(1, 2_000))),
        "quantum/tls-no-cert": lambda rng: _exchange(qport, nocert, _prefixed(rng.randbytes(64))),
        "quantum/garbage-frame": q(lambda rng, me: _prefixed(rng.randbytes(rng.randrange(0, 3_000)))),
        "quantum/oversize-length": q(
            lambda rng, me: _prefixed(rng.randbytes(32), rng.randrange(MAX_FRAME_BYTES + 1, 1 << 32))
        ),
        "quantum/truncated-frame": q(_truncated_hello),
        "quantum/truncated-prefix": q(lambda rng, me: rng.randbytes(rng.randrange(1, 4))),
        "quantum/wrong-version": q(
            lambda rng, me: _prefixed(_wrong_version(_channel_hello(me, d.B if me == d.A else d.A), rng))
        ),
        "quantum/first-not-hello": q(
            lambda rng, me: _prefixed(encode_frame(lm.ChannelError(reason="fuzz"), rng.randrange(1 << 20)))
        ),
        "quantum/hello-wrong-role": q(
            lambda rng, me: _prefixed(
                _channel_hello(me, d.B if me == d.A else d.A, role="bob" if me == d.A else "alice")
            )
        ),
        "quantum/hello-claims-other": q(
            lambda rng, me: _prefixed(_channel_hello(d.B if me == d.A else d.A, me))
        ),
        "quantum/hello-then-garbage": q(
            lambda rng, me: (
                _prefixed(_channel_hello(me, fake_peer(rng)))
                + _prefixed(rng.randbytes(rng.randrange(1, 500)))
            )
        ),
        "quantum/hello-then-oversize": q(
            lambda rng, me: (
                _prefixed(_channel_hello(me, fake_peer(rng))) + _prefixed(b"", MAX_FRAME_BYTES + 1)
            )
        ),
        "quantum/sae-cert": lambda rng: _exchange(
            qport, ctx[f"pacs-{d.A}"], _prefixed(_channel_hello(d.A, d.B))
        ),
        "classical/plain-tcp": lambda rng: _plain(cport, rng.randbytes(rng.randrange(1, 2_000))),
        "classical/tls-no-cert": lambda rng: _exchange(cport, nocert, _upgrade("/v1/link", rng)),
        "classical/tls-not-http": lambda rng: _exchange(
            cport, ctx[d.A], rng.randbytes(rng.randrange(1, 3_000))
        ),
        "classical/malformed-http": lambda rng: _exchange(cport, ctx[d.A], _malformed_http(rng)),
        "classical/upgrade-missing": lambda rng: _exchange(
            cport, ctx[d.A], _upgrade("/v1/link", rng, complete=False)
        ),
        "classical/bad-path": lambda rng: _exchange(cport, ctx[d.A], _bad_path(rng)),
        "classical/wrong-cert-upgrade": lambda rng: _exchange(
            cport, ctx[rng.choice([f"pacs-{d.A}", f"ehr-{d.B}", "channel", d.B])], _upgrade("/v1/link", rng)
        ),
    }

    # Each facility's cases in a function of their own: the lambdas close over that facility's ports and
    # contexts (a lambda in the loop would see the last facility's).
    def facility_cases(name: str) -> dict[str, Case]:
        lport, kport = ports[f"{name}.local"], ports[f"{name}.kme"]
        sae_ctx, facility_ctx = ctx[f"pacs-{d.A}" if name == d.A else f"ehr-{d.B}"], ctx[name]
        tag = name[-1]
        return {
            f"local-{tag}/tcp-garbage": lambda rng: _plain(lport, rng.randbytes(rng.randrange(1, 3_000))),
            f"local-{tag}/malformed-http": lambda rng: _plain(lport, _malformed_http(rng)),
            f"local-{tag}/huge-headers": lambda rng: _plain(lport, _huge_headers(rng)),
            f"local-{tag}/bad-path": lambda rng: _plain(lport, _bad_path(rng)),
            f"local-{tag}/truncated": lambda rng: _plain(
                lport, _http("GET", "/v1/status")[: rng.randrange(1, 20)]
            ),
            f"kme-{tag}/plain-tcp": lambda rng: _plain(kport, rng.randbytes(rng.randrange(1, 2_000))),
            f"kme-{tag}/tls-no-cert": lambda rng: _exchange(kport, nocert, _http("GET", "/")),
            f"kme-{tag}/tls-not-http": lambda rng: _exchange(
                kport, sae_ctx, rng.randbytes(rng.randrange(1, 3_000))
            ),
            f"kme-{tag}/malformed-http": lambda rng: _exchange(kport, sae_ctx, _malformed_http(rng)),
            f"kme-{tag}/huge-headers": lambda rng: _exchange(kport, sae_ctx, _huge_headers(rng)),
            f"kme-{tag}/bad-request": lambda rng: _exchange(
                kport, sae_ctx, _kme_request(deployment, name, rng)
            ),
            f"kme-{tag}/facility-cert": lambda rng: _exchange(
                kport, facility_ctx, _kme_request(deployment, name, rng)
            ),
        }

    for name in (d.A, d.B):
        cases |= facility_cases(name)
    return cases


CHANNEL_REFUSALS = frozenset(
    f"quantum/{c}"
    for c in (
        "garbage-frame",
        "oversize-length",
        "truncated-frame",
        "truncated-prefix",
        "wrong-version",
        "first-not-hello",
        "hello-wrong-role",
        "hello-claims-other",
        "hello-then-garbage",
        "hello-then-oversize",
        "sae-cert",
    )
)
"""Channel inputs that pass TLS and are malformed: each must close its connection with a logged reason."""


def ws_payload(rng: random.Random) -> tuple[str, bytes]:
    """One bad websocket frame for phase 2, and its category."""
    stale = encode_frame(lm.ChannelError(reason="x" * rng.randrange(1, 200)), 1)
    kinds: dict[str, Callable[[], bytes]] = {
        "random-binary": lambda: _ws_frame(rng.randbytes(rng.randrange(1, 2_000)), rng),
        "truncated-protobuf": lambda: _ws_frame(stale[: rng.randrange(1, len(stale))], rng),
        "wrong-version": lambda: _ws_frame(_wrong_version(stale, rng), rng),
        "huge-announced": lambda: _ws_frame(
            rng.randbytes(64), rng, announce=rng.randrange(MAX_FRAME_BYTES + 1, 1 << 62)
        ),
        "text-message": lambda: _ws_frame(b"hello from the fuzzer", rng, opcode=1),
        "bad-opcode": lambda: _ws_frame(rng.randbytes(16), rng, opcode=rng.choice([3, 4, 5, 6, 7, 11, 12])),
        "unmasked": lambda: _ws_frame(rng.randbytes(32), rng, mask=False),
    }
    kind = rng.choice(sorted(kinds))
    return f"classical/ws-{kind}", kinds[kind]()


# ---- the run --------------------------------------------------------------------------------------------
async def _run_batch(cases: dict[str, Case], names: list[str], rng: random.Random, tally: Tally) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)
    seeds = [rng.randrange(1 << 62) for _ in names]

    async def one(name: str, seed: int) -> None:
        async with gate:
            tally.add(name, await cases[name](random.Random(seed)))

    async with asyncio.TaskGroup() as tg:
        for name, seed in zip(names, seeds, strict=True):
            tg.create_task(one(name, seed))


def _wait_new_round(deployment: Deployment, after: int, timeout: float) -> float | None:
    try:
        return d.wait_for(lambda: d.last_committed(deployment, d.A) > after, timeout, "a new committed round")
    except TimeoutError:
        return None


@dataclass(slots=True)
class LogSummary:
    closes: collections.Counter[str] = field(default_factory=collections.Counter)
    link_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    parse_tracebacks: int = 0
    other_tracebacks: int = 0


def _read_logs(started: d.Started) -> LogSummary:
    summary = LogSummary()
    for name, child in started.group.children.items():
        for line in child.log().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = str(entry.get("msg", ""))
            if "exc" in entry:
                # aiohttp logs a request it cannot parse at ERROR, with the parser's traceback.
                parse = entry.get("logger") == "aiohttp.server" and "http_exceptions" in entry["exc"]
                summary.parse_tracebacks += parse
                summary.other_tracebacks += not parse
            for pattern in CLOSE_PATTERNS.get(name, ()):
                if pattern in message:
                    summary.closes[f"{name}: {pattern}"] += 1
            if name == d.B and message.startswith(LINK_CLOSED):
                summary.link_reasons[message[len(LINK_CLOSED) :].split(":", maxsplit=1)[0]] += 1
    return summary


def fuzz(started: d.Started, frames: int, *, seed: int = 1, check_every: int = 500) -> FuzzReport:
    deployment, group = started.deployment, started.group
    rng = random.Random(seed)
    cases = phase1_cases(deployment)
    ws_frames = max(1, round(frames * WS_SHARE))
    plan = [rng.choice(sorted(cases)) for _ in range(frames - ws_frames)]
    tally = Tally()
    begin = time.monotonic()
    if _wait_new_round(deployment, 0, PROGRESS_TIMEOUT_S) is None:
        raise RuntimeError("the honest link committed no round before the fuzz")
    first = d.last_committed(deployment, d.A)
    audit_seen = len(d.read_audit(deployment, d.A))
    checks = stalls = 0
    last = first
    for start in range(0, len(plan), check_every):
        asyncio.run(_run_batch(cases, plan[start : start + check_every], rng, tally))
        checks += 1
        if not all(d.alive(group).values()) or _wait_new_round(deployment, last, PROGRESS_TIMEOUT_S) is None:
            stalls += 1
        last = max(last, d.last_committed(deployment, d.A))
    before_ws = last
    ws_ctx = d.tls_context(deployment, d.A)
    cport = deployment.ports[f"{d.B}.classical"]
    for _ in range(ws_frames):
        category, payload = ws_payload(rng)
        handshake = _upgrade("/v1/link", rng)
        tally.add(category, asyncio.run(_exchange(cport, ws_ctx, payload, handshake=handshake)))
    recovered = _wait_new_round(
        deployment, max(before_ws, d.last_committed(deployment, d.A)), PROGRESS_TIMEOUT_S
    )
    end = d.last_committed(deployment, d.A)
    established = [
        r for r in d.read_audit(deployment, d.A)[audit_seen:] if r.get("event") == "round_established"
    ]
    alive = d.alive(group)
    logs = _read_logs(started)
    return FuzzReport(
        frames=frames,
        seconds=time.monotonic() - begin,
        sent=dict(sorted(tally.sent.items())),
        outcomes={k: dict(v) for k, v in sorted(tally.outcomes.items())},
        crashes=sum(not ok for ok in alive.values()),
        alive=alive,
        checks=checks,
        stalls=stalls,
        rounds_committed=end - first,
        key_bits=sum(int(r["final_key_bits"]) for r in established),
        recovered_s=recovered,
        logged_closes=dict(logs.closes),
        link_close_reasons=dict(logs.link_reasons),
        expected_channel_closes=sum(
            sum(n for outcome, n in tally.outcomes[c].items() if outcome != "tls-refused")
            for c in CHANNEL_REFUSALS
            if c in tally.outcomes
        ),
        ws_sessions=sum(
            n
            for c, outcomes in tally.outcomes.items()
            if c.startswith("classical/ws-")
            for o, n in outcomes.items()
            if not o.startswith("http-")
        ),
        parse_error_tracebacks=logs.parse_tracebacks,
        other_tracebacks=logs.other_tracebacks,
    )


def print_report(report: FuzzReport) -> None:
    print(f"port fuzz: {report.frames:,} inputs in {report.seconds:.1f} s")
    print(f"{'port/category':36s} {'sent':>6s}  outcomes")
    for name, count in report.sent.items():
        outcomes = ", ".join(
            f"{k} {v}" for k, v in sorted(report.outcomes[name].items(), key=lambda kv: -kv[1])
        )
        print(f"{name:36s} {count:6d}  {outcomes}")
    per_port: collections.Counter[str] = collections.Counter()
    for name, count in report.sent.items():
        per_port[name.split("/")[0]] += count
    print("per port: " + ", ".join(f"{k} {v}" for k, v in sorted(per_port.items())))
    print(f"crashes: {report.crashes}; alive at the end: {report.alive}")
    print(
        f"honest link: {report.rounds_committed} rounds committed by A during the fuzz, "
        f"{report.key_bits:,} final key bits; {report.checks} checks, {report.stalls} stalls; "
        f"recovered after phase 2 in "
        + ("-" if report.recovered_s is None else f"{report.recovered_s:.2f} s")
    )
    print(
        f"logged close reasons: {report.logged_closes}; channel refusals expected "
        f"{report.expected_channel_closes}, websocket sessions {report.ws_sessions}"
    )
    print(f"B's link-closed reasons: {report.link_close_reasons}")
    print(
        f"log lines with a traceback: {report.parse_error_tracebacks} from aiohttp's HTTP parser "
        f"(malformed requests), {report.other_tracebacks} other"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=10_000, help="hostile inputs to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check-every", type=int, default=500, help="inputs between liveness checks")
    parser.add_argument("--pulses", type=int, default=700_000, help="pulses per round of the honest link")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with d.running(
        pulses_per_round=args.pulses, channel_connections_per_link=CHANNEL_CONNECTIONS_PER_LINK
    ) as started:
        report = fuzz(started, args.frames, seed=args.seed, check_every=args.check_every)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0 if report.crashes == 0 and report.stalls == 0 else 1


__all__ = ["FuzzReport", "fuzz"]

if __name__ == "__main__":
    sys.exit(main())
