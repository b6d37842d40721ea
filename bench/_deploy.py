"""What the link benchmark, the port fuzzer and the kill -9 test share: a fresh loopback deployment with
its three processes, the local API read over plain HTTP, the audit log read back, and TLS contexts for
the facility and SAE certificates of the deployment's demo PKI.

The scripts import this module as a sibling (``python bench/kill9.py`` puts bench/ first on sys.path);
the tests put bench/ on sys.path themselves.
"""

from __future__ import annotations

import contextlib
import json
import random
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.testbed.deployment import Deployment, write_loopback_deployment
from qlinkmed.qlinkd.testbed.launcher import ProcessGroup
from qlinkmed.qlinkd.testbed.wan import WanSpec
from qlinkmed.qlinkd.testbed.wan_links import WanLinks

A, B = "hospital-a", "hospital-b"
NAMES = ("channel", A, B)
POLL_S = 0.01
"""How often a readiness condition is re-checked: the benchmark's resolution for "first key"."""
NO_PAUSE_BITS = 1 << 40
"""A high watermark no run reaches, so a long run never pauses key generation and reads as a stall."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """A deployment whose processes are running, with how long they took to come up."""

    deployment: Deployment
    """The configuration on disk."""
    group: ProcessGroup
    """The running processes (stopped by `running`)."""
    spawned_at: float
    """time.monotonic() just before the first process was spawned."""
    ready_s: float
    """Seconds from spawning the processes until all three sent READY=1."""
    wan: WanLinks | None = None
    """The WAN emulator proxies on the classical and both data links (None: the facilities dial each
    other directly)."""


@contextlib.contextmanager
def running(
    root: Path | None = None, *, wan: str | None = None, wan_seed: int = 0, **options: Any
) -> Iterator[Started]:
    """Write a fresh deployment (options go to write_loopback_deployment), start the channel service and
    both daemons together, wait for READY=1 from all three, and stop them all on exit.

    With `wan` (a WanSpec text such as "25ms" or "5ms,1ms,0.1%"; "0ms" is loopback through the proxies),
    the classical link and both data links go through WAN emulator proxies that run in this process, on
    a thread of their own, from before the daemons start until after they stop; jitter and loss draw from
    random.Random(wan_seed), so a run can be repeated."""
    spec = None if wan is None else WanSpec.parse(wan)  # a bad spec fails before anything is written
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qlink-bench-"))) / "deploy"
        options.setdefault("high_watermark_bits", NO_PAUSE_BITS)
        options.setdefault("low_watermark_bits", NO_PAUSE_BITS // 2)
        deployment = write_loopback_deployment(root, wan_proxies=spec is not None, **options)
        links = None
        if spec is not None:
            rng = random.Random(wan_seed) if spec.random else None  # emulated network noise, not a secret
            links = stack.enter_context(WanLinks(deployment, spec, rng=rng))
        group = stack.enter_context(ProcessGroup(deployment))
        spawned_at = time.monotonic()
        for name in NAMES:
            group.start(name)
        for name in NAMES:
            group.wait_ready(name)
        yield Started(
            deployment=deployment,
            group=group,
            spawned_at=spawned_at,
            ready_s=time.monotonic() - spawned_at,
            wan=links,
        )


def alive(group: ProcessGroup) -> dict[str, bool]:
    return {name: child.process.poll() is None for name, child in group.children.items()}


def peak_rss_mib(group: ProcessGroup) -> dict[str, float]:
    """Each running process's peak resident set so far (VmHWM from /proc, Linux), in MiB."""
    peaks = {}
    for name, child in group.children.items():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[name] = int(line.split()[1]) / 1024
    return peaks


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` every POLL_S until it holds; returns the seconds waited, raises TimeoutError."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(POLL_S)
    return time.monotonic() - start


def local_get(deployment: Deployment, facility: str, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET a local-API document (/v1/status or /v1/keys) of a facility."""
    response = httpx.get(deployment.local_url(facility) + path, timeout=timeout)
    response.raise_for_status()
    return response.json()


def link_status(deployment: Deployment, facility: str) -> dict[str, Any] | None:
    """The facility's one link entry in /v1/status, None while its local API does not answer."""
    try:
        return local_get(deployment, facility, "/v1/status", timeout=2.0)["links"][0]
    except (httpx.HTTPError, OSError, KeyError, IndexError, ValueError):
        return None


def last_committed(deployment: Deployment, facility: str) -> int:
    """Highest committed round id of the facility's link (-1 while its local API does not answer)."""
    status = link_status(deployment, facility)
    return -1 if status is None else int(status["last_committed_round"])


def audit_path(deployment: Deployment, facility: str) -> Path:
    return deployment.root / "state" / facility / "audit.jsonl"


def read_audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    """Every complete record of the facility's audit log (a line being written is skipped)."""
    path = audit_path(deployment, facility)
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def tls_context(deployment: Deployment, name: str | None) -> ssl.SSLContext:
    """A client context trusting the deployment's CA and presenting certificate `name` (None: none)."""
    ca = deployment.root / "pki" / "ca.pem"
    if name is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(ca))
        return context
    cert, key = deployment.pki(name)
    return pki.client_context(ca, cert, key)


def sae_client(deployment: Deployment, sae: str, timeout: float = 10.0) -> httpx.Client:
    """An HTTP client that authenticates as SAE `sae` (its client certificate) and verifies the KME."""
    return httpx.Client(verify=tls_context(deployment, sae), timeout=timeout)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
