"""The WAN emulator proxies of one deployment (`Deployment.routes`: the classical link and both data links),
run on an asyncio loop in a background thread so that synchronous code (a benchmark polling the daemons,
the `testbed run` status loop) can cut, restore and flap them while they carry traffic, and a control
socket through which `qlink testbed wan` does the same from another shell.

The control protocol is one JSON line each way over a unix socket in the deployment's directory (0700, so
only its owner can reach it): ``{"action": "cut"|"restore"|"flap"|"status", "scope": "all"|"classical",
"period_s": S, "down_s": S}`` answered by ``{"ok": true, "spec": ..., "links": [...]}`` or
``{"ok": false, "error": ...}``. The daemons never import this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.testbed.deployment import Deployment, Route
from qlinkmed.qlinkd.testbed.wan import UniformSource, WanProxy, WanSpec, WanStatistics

T = TypeVar("T")

CONTROL_SOCKET = "wan.sock"
"""The control socket's name in the deployment's directory."""
CALL_TIMEOUT_S = 10.0
"""How long a call from another thread (or a control client) waits for the proxies' loop to answer."""
MAX_REQUEST_BYTES = 4096
"""A control request is one short JSON line; a longer one is refused unread."""
MAX_UNIX_PATH = 107
"""Bytes in a unix socket path (sockaddr_un's 108 with the terminating NUL)."""
ACTIONS = ("cut", "restore", "flap", "status")
SCOPES = ("all", "classical")
CLASSICAL = "classical"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkState:
    """One proxied link as the control socket reports it (an immutable snapshot)."""

    name: str
    """"classical" or "data.<sender>"."""
    route: Route
    """Who dials whom, through which ports."""
    mode: str
    """What it was last told: "up", "cut" or "flapping <period>/<down> s"."""
    cut: bool
    """Whether the link is partitioned at this instant (a flapping link alternates)."""
    statistics: WanStatistics
    """The proxy's counters."""

    def to_json(self) -> dict[str, Any]:
        s = self.statistics
        return {
            "name": self.name,
            "sender": self.route.sender,
            "receiver": self.route.receiver,
            "port": self.route.port,
            "target": self.route.target,
            "mode": self.mode,
            "cut": self.cut,
            "connections": s.connections,
            "upstream_read": s.upstream_read,
            "upstream_delivered": s.upstream_delivered,
            "downstream_read": s.downstream_read,
            "downstream_delivered": s.downstream_delivered,
            "stalls": s.stalls,
            "held": s.held,
        }


def describe(spec: WanSpec) -> str:
    """A spec in words, for the operator: ``25 ms one way, jitter 5 ms, loss 0.5 %, rate 100 Mbit/s``."""
    parts = [f"{spec.delay_s * 1e3:g} ms one way"]
    if spec.jitter_s:
        parts.append(f"jitter {spec.jitter_s * 1e3:g} ms")
    if spec.loss:
        parts.append(f"loss {spec.loss * 100:g} %")
    if spec.rate_bps is not None:
        parts.append(f"rate {spec.rate_bps / 1e6:g} Mbit/s")
    return ", ".join(parts)


class WanLinks:
    """A WanProxy on every route of `deployment`, all with `spec`, on a loop of their own in a daemon thread.
    start() returns once every proxy listens (on the ports the configurations name); close() ends them.
    Every method may be called from any thread: it runs on the proxies' loop and returns its result.
    `classical` and `data` are the proxies themselves, for reading (`is_cut`, `statistics()`); to act on
    one alone from another thread, pass its method to `call` (``links.call(links.data[A].cut)``)."""

    def __init__(
        self,
        deployment: Deployment,
        spec: WanSpec,
        *,
        rng: UniformSource | None = None,
        control: Path | None = None,
        on_command: Callable[[str], None] | None = None,
    ) -> None:
        if CLASSICAL not in deployment.routes:
            raise ConfigError(
                "wan",
                f"the deployment in {deployment.root} has no WAN proxy ports (write it with "
                "`qlink testbed init --wan-proxies`, or wan_proxies=True)",
            )
        if spec.random and rng is None:
            raise UsageError("a WanSpec with jitter or loss needs rng (e.g. random.Random(seed))")
        if control is not None and len(os.fsencode(control)) > MAX_UNIX_PATH:
            raise ConfigError(
                "control", f"{control} is longer than a unix socket path may be ({MAX_UNIX_PATH} bytes)"
            )
        self.deployment = deployment
        self.spec = spec
        self.control = control
        self._rng = rng
        self._on_command = on_command
        self._proxies: dict[str, WanProxy] = {}
        self._modes: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = CALL_TIMEOUT_S) -> None:
        """Start the loop thread and every proxy (and the control socket); raise what stopped them."""
        if self._thread is not None:
            raise UsageError("WanLinks.start() called twice")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready)), name="wan-links", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every proxy (dropping its connections) and the control socket, and end the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(CALL_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"the WAN proxies did not stop within {CALL_TIMEOUT_S:g} s")

    def __enter__(self) -> WanLinks:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the proxies -------------------------------------------------------------------------------------
    @property
    def classical(self) -> WanProxy:
        """The proxy on the classical link (Alice -> Bob's classical listener)."""
        return self._proxy(CLASSICAL)

    @property
    def data(self) -> dict[str, WanProxy]:
        """The proxies on the data links, by the facility that dials them."""
        return {
            name.removeprefix("data."): self._proxy(name)
            for name in self.deployment.routes
            if name != CLASSICAL
        }

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the proxies' loop (asyncio objects are not thread-safe) and return its result."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            raise UsageError("the WAN proxies are not running (start() them first)")
        if threading.current_thread() is thread:
            return fn()

        async def on_loop() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(on_loop(), loop).result(CALL_TIMEOUT_S)

    def cut(self) -> None:
        """Partition every link: nothing is delivered, new connections wait."""
        self.call(lambda: self._apply("cut", "all"))

    def restore(self) -> None:
        """End a partition or a flap on every link."""
        self.call(lambda: self._apply("restore", "all"))

    def flap(self, period_s: float, down_s: float) -> None:
        """Cut every link for `down_s` at the start of every `period_s`, all together, until restore()
        or cut()."""
        self.call(lambda: self._apply("flap", "all", period_s, down_s))

    def cut_classical(self) -> None:
        """Partition the classical link only (the data links keep carrying)."""
        self.call(lambda: self._apply("cut", CLASSICAL))

    def restore_classical(self) -> None:
        """End a partition or a flap of the classical link only."""
        self.call(lambda: self._apply("restore", CLASSICAL))

    def statistics(self) -> dict[str, WanStatistics]:
        """Each link's counters by link name ("classical", "data.<sender>")."""
        return self.call(lambda: {name: proxy.statistics() for name, proxy in self._proxies.items()})

    def links(self) -> list[LinkState]:
        """Every link's state and counters."""
        return self.call(self._states)

    # ---- on the loop -------------------------------------------------------------------------------------
    def _proxy(self, name: str) -> WanProxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            raise UsageError("the WAN proxies are not running (start() them first)")
        return proxy

    def _states(self) -> list[LinkState]:
        return [
            LinkState(
                name=name,
                route=self.deployment.routes[name],
                mode=self._modes[name],
                cut=proxy.is_cut,
                statistics=proxy.statistics(),
            )
            for name, proxy in self._proxies.items()
        ]

    def _apply(self, action: str, scope: str, period_s: float = 0.0, down_s: float = 0.0) -> None:
        names = [CLASSICAL] if scope == CLASSICAL else list(self._proxies)
        if action == "flap" and not (math.isfinite(period_s) and 0 < down_s < period_s):
            raise ConfigError(
                "flap", f"need 0 < down < period (seconds), got down {down_s!r}, period {period_s!r}"
            )
        for name in names:
            proxy = self._proxy(name)
            if action == "cut":
                proxy.cut()
                self._modes[name] = "cut"
            elif action == "restore":
                proxy.restore()
                self._modes[name] = "up"
            elif action == "flap":
                proxy.flap(period_s, down_s)
                self._modes[name] = f"flapping {period_s:g}/{down_s:g} s"
            else:
                raise ConfigError("action", f"expected one of {', '.join(ACTIONS)}, got {action!r}")

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        proxies = {
            name: WanProxy(("127.0.0.1", route.target), self.spec, rng=self._rng, listen_port=route.port)
            for name, route in self.deployment.routes.items()
        }
        server: asyncio.Server | None = None
        try:
            try:
                for proxy in proxies.values():
                    await proxy.start()
                if self.control is not None:
                    server = await self._serve_control(self.control)
            except Exception as exc:  # handed to start(), which raises it in the caller's thread
                ready.set_exception(exc)
                return
            self._proxies = proxies
            self._modes = dict.fromkeys(proxies, "up")
            ready.set_result(None)
            await self._stopping.wait()
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
                if self.control is not None:
                    self.control.unlink(missing_ok=True)
            for proxy in proxies.values():
                await proxy.close()

    async def _serve_control(self, path: Path) -> asyncio.Server:
        if path.exists():
            # A socket left by a testbed that was killed is removed; one that answers is another testbed's.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()
            else:
                raise ConfigError("control", f"{path} is in use: another `qlink testbed run` serves it")
            finally:
                probe.close()
        server = await asyncio.start_unix_server(self._handle_control, str(path), limit=MAX_REQUEST_BYTES)
        path.chmod(0o600)
        return server

    async def _handle_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), CALL_TIMEOUT_S)
                answer = self._answer(line)
            except (ValueError, TimeoutError) as exc:  # ValueError: a line over the limit
                answer = {"ok": False, "error": f"unreadable request: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass  # the client went away; nothing was changed for it that it needs to hear about
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            action, scope, period_s, down_s = parse_request(line)
            if action != "status":
                self._apply(action, scope, period_s, down_s)
                if self._on_command is not None:
                    what = f"flap {period_s:g}/{down_s:g} s" if action == "flap" else action
                    self._on_command(
                        f"wan: {what} ({'classical link' if scope == CLASSICAL else 'all links'})"
                    )
        except ConfigError as exc:
            return {"ok": False, "error": f"{exc.field}: {exc.message}"}
        return {"ok": True, "spec": describe(self.spec), "links": [s.to_json() for s in self._states()]}


def parse_request(line: bytes) -> tuple[str, str, float, float]:
    """(action, scope, period_s, down_s) of one control request; ConfigError names what is wrong."""
    try:
        request = json.loads(line)
    except ValueError:
        raise ConfigError("request", "not a JSON line") from None
    if not isinstance(request, dict):
        raise ConfigError("request", "not a JSON object")
    action, scope = request.get("action"), request.get("scope", "all")
    if action not in ACTIONS:
        raise ConfigError("action", f"expected one of {', '.join(ACTIONS)}, got {action!r}")
    if scope not in SCOPES:
        raise ConfigError("scope", f"expected one of {', '.join(SCOPES)}, got {scope!r}")
    times = []
    for key in ("period_s", "down_s"):
        value = request.get(key, 0.0)
        if action == "flap" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(key, f"expected seconds, got {value!r}")
        times.append(float(value) if action == "flap" else 0.0)
    return action, scope, times[0], times[1]


def control(root: Path, request: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the `testbed run` serving `root` and return its answer. Raises OSError when
    none is listening and ConfigError when it refused the request."""
    path = root / CONTROL_SOCKET
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(
            "control", f"{path} is longer than a unix socket path may be ({MAX_UNIX_PATH} bytes)"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        client.sendall(json.dumps(request).encode() + b"\n")
        answer = bytearray()
        while not answer.endswith(b"\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
    try:
        body = json.loads(answer)
    except ValueError:
        raise ConfigError("control", f"{path} answered something that is not JSON") from None
    if not isinstance(body, dict) or not body.get("ok"):
        error = body.get("error") if isinstance(body, dict) else None
        raise ConfigError("control", str(error or "the testbed refused the request"))
    return body
