"""Start a loopback deployment's processes (the channel service and the facility daemons) and know when
each is ready: every child gets its own NOTIFY_SOCKET, and readiness is its READY=1, exactly what systemd
waits for. Used by the tests, the benchmarks and the demo; nothing here sleeps to guess readiness."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qlinkmed.qlinkd.testbed.deployment import Deployment


@dataclass(slots=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    notify: socket.socket
    log_path: Path
    ready: bool = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(slots=True)
class ProcessGroup:
    deployment: Deployment
    log_level: str = "info"
    children: dict[str, Child] = field(default_factory=dict)
    _sockdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qlink-notify-")))

    def start(self, name: str, env: dict[str, str] | None = None) -> Child:
        """Start "channel" or a facility id (its previous process must have exited)."""
        old = self.children.get(name)
        if old is not None and old.process.poll() is None:
            raise RuntimeError(f"{name} is still running")
        if old is not None:
            old.notify.close()
        if name == "channel":
            argv = [
                sys.executable,
                "-m",
                "qlinkmed.qlinkd.channel.main",
                "--config",
                str(self.deployment.channel),
            ]
        else:
            config = self.deployment.facilities[name]
            argv = [sys.executable, "-m", "qlinkmed.qlinkd.main", "--config", str(config)]
        argv += ["--log-level", self.log_level]
        path = self._sockdir / f"{name}.sock"
        path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(path))
        log_path = self.deployment.root / f"{name}.log"
        env = dict(os.environ, **(env or {}), NOTIFY_SOCKET=str(path))
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.deployment.root
            )
        child = Child(name=name, process=process, notify=notify, log_path=log_path)
        self.children[name] = child
        return child

    def wait_ready(self, name: str, timeout: float = 30.0) -> float:
        """Block until `name` sent READY=1; returns the seconds waited. Raises if it exits or times out."""
        child = self.children[name]
        start = time.monotonic()
        while not child.ready:
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                raise TimeoutError(f"{name} not ready after {timeout} s; log:\n{child.log()[-3000:]}")
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {child.process.returncode}; log:\n{child.log()[-3000:]}"
                )
            child.notify.settimeout(min(0.2, remaining))
            try:
                message = child.notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                child.ready = True
        return time.monotonic() - start

    def start_all(self, timeout: float = 30.0) -> None:
        for name in ("channel", *self.deployment.facilities):
            self.start(name)
        for name in ("channel", *self.deployment.facilities):
            self.wait_ready(name, timeout)

    def next_notification(self, name: str, timeout: float = 10.0) -> str:
        """The next message `name` sends on its notify socket (after readiness: watchdog, status)."""
        child = self.children[name]
        child.notify.settimeout(timeout)
        return child.notify.recv(4096).decode(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        child = self.children[name]
        if child.process.poll() is None:
            child.process.send_signal(sig)
        return child.process.wait(timeout=30)

    def stop_all(self) -> None:
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.notify.close()
        with contextlib.suppress(OSError):
            for path in self._sockdir.iterdir():
                path.unlink()
            self._sockdir.rmdir()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
