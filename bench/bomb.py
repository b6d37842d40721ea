"""Hostile uploads against a running two-daemon deployment: how fast they are refused, how much memory the
daemons spend, and whether the daemon's other APIs stay responsive meanwhile (issue 14, item 2).

    .venv/bin/python bench/bomb.py            # text report
    .venv/bin/python bench/bomb.py --json

The inputs, each POSTed to facility A's local API (the daemon's own path: `qlink send` refuses the bombs
before uploading them):

- "bomb-1GiB": a 1 MB Deflated Explicit VR Little Endian DICOM whose pixel data is 1 GiB of zeros, declared
  honestly (32768 x 16384 x 16 bits).
- "bomb-small-header": the same 1 GiB of zeros behind a header declaring a 512 x 512 image.
- "fhir-6.7MB": a valid 6.7 MB FHIR Bundle (accepted and queued; it is the validation stall that counts).

While each upload is in flight, two threads poll A's local API (GET /v1/status) and A's ETSI 014 KME (GET
.../status as an SAE) every 5 ms; the report gives the slowest answer of each (the event loop's stall)
next to the time to the daemon's answer (only polls overlapping the upload count) and when, from the
upload's start, the slowest local-API poll began. "idle" polls for 5 s with no upload: the machine's own
jitter, for comparison. Memory: the peak RSS (VmHWM) of each daemon process and of its child processes
(the validator workers and multiprocessing's resource tracker), read from /proc after the runs. Targets:
refused in < 1 s, daemons < 300 MB, local API and KME answering in < 50 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _deploy as d
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for the DICOM factory
from tests.dicom_factory import make_deflate_bomb

A, B = d.A, d.B
GIB = 1 << 30


def _fhir_bundle(target_bytes: int) -> bytes:
    entries = []
    i = 0
    size = 0
    while size < target_bytes:
        entry = {
            "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
            "resource": {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
                },
                "effectiveDateTime": "2026-01-01T00:00:00Z",
                "valueQuantity": {
                    "value": 60 + i % 40,
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                },
            },
        }
        size += len(json.dumps(entry)) + 2
        entries.append(entry)
        i += 1
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return json.dumps(bundle).encode()


def _upload_body(name: str, data: bytes) -> bytes:
    files = [[name, len(data), hashlib.sha256(data).hexdigest(), "dicom"]]
    declared = json.dumps({"kind": "study", "study_uid": None, "files": files}).encode()
    return len(declared).to_bytes(4, "big") + declared + data


POLL_S = 0.005


def _poll(get: Any, stop: threading.Event, latencies: list[tuple[float, float]]) -> None:
    """(start, seconds) of a GET every POLL_S until `stop`."""
    while not stop.is_set():
        start = time.monotonic()
        get()
        latencies.append((start, time.monotonic() - start))
        stop.wait(POLL_S)


def _slowest(latencies: list[tuple[float, float]], begin: float, end: float) -> float:
    during = [s for t, s in latencies if t + s >= begin and t <= end]
    return round(max(during, default=float("nan")) * 1e3, 1)


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def run(started: d.Started) -> dict[str, Any]:
    deployment = started.deployment
    token = (deployment.root / "state" / A / "local-api.token").read_text().strip()
    local = httpx.Client(base_url=deployment.local_url(A), timeout=30.0)
    sae = d.sae_client(deployment, f"pacs-{A}")
    kme_status = f"{deployment.kme_url(A)}/api/v1/keys/pacs-{B}/status"
    auth = {"Authorization": f"Bearer {token}"}
    cases: dict[str, tuple[str | None, bytes]] = {
        "idle": (None, b""),
        "bomb-1GiB": ("/v1/transfers", _upload_body("bomb.dcm", make_deflate_bomb(32768, 16384, bits=16))),
        "bomb-small-header": (
            "/v1/transfers",
            _upload_body("small.dcm", make_deflate_bomb(512, 512, zeros=GIB)),
        ),
        "fhir-6.7MB": ("/v1/ehr", _fhir_bundle(6_700_000)),
    }
    results: dict[str, Any] = {}
    for name, (path, body) in cases.items():
        stop = threading.Event()
        local_lat: list[tuple[float, float]] = []
        kme_lat: list[tuple[float, float]] = []
        pollers = [
            threading.Thread(target=_poll, args=(lambda: local.get("/v1/status"), stop, local_lat)),
            threading.Thread(target=_poll, args=(lambda: sae.get(kme_status), stop, kme_lat)),
        ]
        for poller in pollers:
            poller.start()
        time.sleep(0.1)  # both pollers answering before the upload starts
        start = time.monotonic()
        if path is None:
            time.sleep(5.0)
            status, said = 0, "(no upload)"
        else:
            answer = local.post(f"{path}?to={B}&name=bundle.json", content=body, headers=auth)
            status, said = answer.status_code, answer.json().get("message") or answer.json().get("state")
        seconds = time.monotonic() - start
        stop.set()
        for poller in pollers:
            poller.join()
        results[name] = {
            "upload_bytes": len(body),
            "status": status,
            "answer": said,
            "answer_s": round(seconds, 3),
            # Polls that overlapped the upload (the first ones also connected: they are not counted).
            "local_api_max_ms": _slowest(local_lat, start, start + seconds),
            "kme_max_ms": _slowest(kme_lat, start, start + seconds),
            "slowest_local_at_s": round(max(local_lat, key=lambda p: p[1])[0] - start, 3),
            "polls": sum(1 for t, s in local_lat + kme_lat if t + s >= start and t <= start + seconds),
        }
    memory = {}
    for facility in (A, B):
        pid = started.group.children[facility].process.pid
        workers = psutil.Process(pid).children()  # the validators and multiprocessing's resource tracker
        memory[facility] = {
            "daemon_peak_rss_mb": round(_vm(pid, "VmHWM") / 1e6, 1),
            "validator_peak_rss_mb": [round(_vm(w.pid, "VmHWM") / 1e6, 1) for w in workers],
        }
    return {"cases": results, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with d.running(pulses_per_round=200_000) as started:
        report = run(started)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, r in report["cases"].items():
        print(
            f"{name:18} {r['upload_bytes']:>10,} B -> HTTP {r['status']} in {r['answer_s'] * 1e3:7.1f} ms; "
            f"slowest local API {r['local_api_max_ms']:6.1f} ms, KME {r['kme_max_ms']:6.1f} ms "
            f"({r['polls']} polls, slowest at {r['slowest_local_at_s']} s)\n{'':18} {r['answer']}"
        )
    for facility, m in report["memory"].items():
        print(
            f"{facility}: daemon peak RSS {m['daemon_peak_rss_mb']} MB, "
            f"validator worker(s) {m['validator_peak_rss_mb']} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
