"""`qlink demo [--eve]`: the whole product in one command, nothing to configure.

It writes a loopback deployment into a temporary directory (CA, certificates, pre-shared key), starts the
quantum-channel service and two facility daemons, waits for quantum key, sends a real DICOM study
(pydicom's bundled MR study) and EHR messages from hospital-a to hospital-b, fetches them back out of
hospital-b's inbox, checks them byte for byte and prints a summary. With --eve an intercept-resend
eavesdropper sits on the fibre from the start: every round aborts on its QBER, no key reaches the pools,
and the study waits in the outbox: nothing is sent.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..daemon_http import ApiError

EXIT_OK, EXIT_FAILURE = 0, 1
STUDY_DIR = "dicomdirtests/98892003"
"""pydicom's bundled 11-instance MR study (explicit VR little endian, native pixel data)."""
A, B = "hospital-a", "hospital-b"
EHR_REPEATS = 20
MIN_OWNED_BITS = 300_000
"""Key each facility holds before the demo sends: enough one-time pad for every EHR message it sends."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eve", action="store_true", help="attach an intercept-resend eavesdropper")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="run in DIR (new or empty) and keep it")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds allowed for each step (90)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, flush=True)


def study_entries() -> list[tuple[Path, Any]]:
    """The largest study among pydicom's bundled dicomdirtests/98892003 files, as (path, ContentInfo)."""
    from pydicom.data import get_testdata_file

    from qlinkmed.qlinkd.content import collect_paths, group_studies, validate

    anchor = get_testdata_file("MR_small.dcm", download=False)
    if anchor is None:
        raise FileNotFoundError("pydicom's bundled test files are missing")
    paths = {p.name: p for p in collect_paths([Path(str(anchor)).parent / STUDY_DIR])}
    infos = [(name, validate(name, path.read_bytes())) for name, path in paths.items()]
    largest = max(group_studies(infos), key=lambda g: len(g.names))
    return [(paths[name], info) for name, info in zip(largest.names, largest.infos, strict=True)]


def _metric(text: str, name: str, peer: str | None = None) -> float:
    """A sample's value in Prometheus text (`peer`: its one label), 0 when absent."""
    labels = "" if peer is None else rf'\{{peer="{re.escape(peer)}"\}}'
    match = re.search(rf"^{name}{labels} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    if args.keep is not None:
        root = args.keep.resolve()
        if root.exists() and any(root.iterdir()):
            print(f"qlink demo: error: {args.keep} is not empty", file=sys.stderr)
            return 2
        return _run_in(root, args)
    with tempfile.TemporaryDirectory(prefix="qlink-demo-") as tmp:
        return _run_in(Path(tmp), args)


def _run_in(root: Path, args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

    _say(args, f"qlink demo: deployment in {root}" + (" (eavesdropper on the fibre)" if args.eve else ""))
    deployment = write_loopback_deployment(
        root, pulses_per_round=700_000, eve="intercept-resend" if args.eve else "none"
    )
    group = ProcessGroup(deployment)
    try:
        started = time.monotonic()
        group.start_all(timeout=args.timeout)
        _say(args, f"channel service and both daemons ready in {time.monotonic() - started:.2f} s")
        demo = _Demo(deployment, args)
        summary = demo.with_eve() if args.eve else demo.honest()
    except (TimeoutError, RuntimeError, OSError, ApiError) as exc:
        print(f"qlink demo: {str(exc).splitlines()[0]}", file=sys.stderr)
        print(
            f"qlink demo: logs are in {root}/*.log" + ("" if args.keep else " (use --keep DIR)"),
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        group.stop_all()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return EXIT_OK if summary["ok"] else EXIT_FAILURE


class _Demo:
    def __init__(self, deployment: Any, args: argparse.Namespace) -> None:
        from ..data_http import DataTarget

        self.deployment = deployment
        self.args = args
        self.a = DataTarget(deployment.local_url(A), _token(deployment, A))
        self.b = DataTarget(deployment.local_url(B), _token(deployment, B))

    @functools.cached_property
    def reader(self) -> Any:
        """B's inbox as a user with the testbed's all-data role reads it (the facility token sends only);
        the user is added on first use, once B is up."""
        from qlinkmed.qlinkd.testbed.readers import reader_token

        from ..data_http import DataTarget

        return DataTarget(self.deployment.local_url(B), reader_token(self.deployment, B))

    def _status(self, target: Any) -> dict[str, Any]:
        return target.json("GET", "/v1/status")[1]

    def _link(self, target: Any) -> dict[str, Any]:
        return self._status(target)["links"][0]

    def _metrics(self, target: Any) -> str:
        return target.request("GET", "/metrics")[1].decode()

    def honest(self) -> dict[str, Any]:
        from .send import upload

        args = self.args
        t0 = time.monotonic()
        _wait_for(
            lambda: (
                self._link(self.a)["pool_bits_owned"] >= MIN_OWNED_BITS
                and self._link(self.b)["pool_bits_owned"] >= MIN_OWNED_BITS
            ),
            args.timeout,
            "quantum key in both pools",
        )
        first_key_s = time.monotonic() - t0
        link = self._link(self.a)
        _say(
            args,
            f"quantum key in both pools after {first_key_s:.2f} s (QBER {link['last_round']['qber']:.2%})",
        )

        entries = study_entries()
        files = [p for p, _ in entries]
        study_uid = entries[0][1].study_uid
        total = sum(i.size for _, i in entries)
        _say(args, f"sending DICOM study {study_uid}: {len(entries)} instances, {total:,} bytes")
        study = upload(self.a, B, "study", entries, study_uid, wait=args.timeout, show_progress=False)
        if study.get("state") != "delivered":
            raise RuntimeError(f"study not delivered: {study}")
        _say(args, f"  delivered in {study['seconds'] * 1e3:.1f} ms")

        from ..demo_data import FHIR_BUNDLE, HL7_ORU

        latencies = []
        ehr_results = []
        for i in range(EHR_REPEATS):
            name, body = ("bundle.json", FHIR_BUNDLE) if i % 2 == 0 else ("oru.hl7", HL7_ORU)
            t = time.perf_counter()
            status, result = self.a.json(
                "POST", f"/v1/ehr?to={B}&name={name}&wait={args.timeout:g}", body=body
            )
            latencies.append(time.perf_counter() - t)
            if result.get("state") != "delivered":
                raise RuntimeError(f"EHR message not delivered: HTTP {status} {result}")
            ehr_results.append((result["transfer_id"], body))
        _say(
            args,
            f"sent {EHR_REPEATS} EHR messages (FHIR Bundle, HL7 ORU^R01): "
            f"median {statistics.median(latencies) * 1e3:.2f} ms",
        )

        exact = self._verify(study["transfer_id"], [p.read_bytes() for p in files])
        exact_ehr = all(self._verify(tid, [body]) for tid, body in ehr_results)
        inbox = self.reader.json("GET", f"/v1/inbox/{study['transfer_id']}")[1]
        metrics_a = self._metrics(self.a)
        link = self._link(self.a)
        return {
            "ok": exact and exact_ehr,
            "eve": False,
            "first_key_s": round(first_key_s, 3),
            "rounds": link["rounds"],
            "qber": link["last_round"]["qber"],
            "key_bits_produced": int(_metric(metrics_a, "qlink_key_bits_total", B)),
            "study": {
                "transfer_id": study["transfer_id"],
                "instances": len(entries),
                "bytes": total,
                "seconds": study["seconds"],
                "mbit_per_s": round(total * 8 / study["transfer_seconds"] / 1e6, 2),
                "at_rest": inbox.get("at_rest"),
                "bit_exact": exact,
            },
            "ehr": {
                "messages": EHR_REPEATS,
                "median_ms": round(statistics.median(latencies) * 1e3, 3),
                "max_ms": round(max(latencies) * 1e3, 3),
                "one_time_pad": EHR_REPEATS - int(_metric(metrics_a, "qlink_otp_fallbacks_total")),
                "bit_exact": exact_ehr,
            },
        }

    def _verify(self, transfer_id: str, originals: list[bytes]) -> bool:
        entry = self.reader.json("GET", f"/v1/inbox/{transfer_id}")[1]
        for f, original in zip(entry["file_list"], originals, strict=True):
            status, data, _ = self.reader.request("GET", f"/v1/inbox/{transfer_id}/files/{f['index']}")
            if status != 200 or data != original or hashlib.sha256(data).hexdigest() != f["sha256"]:
                return False
        return True

    def with_eve(self) -> dict[str, Any]:
        from .send import upload

        args = self.args
        link = _wait_for(
            lambda: (lk := self._link(self.a))["rounds"].get("aborted", 0) >= 3 and lk["alarm"] and lk,
            args.timeout,
            "the eavesdropper to be detected",
        )
        last = link["last_round"]
        _say(args, f"rounds abort: {last['reason']} (QBER {last['qber']:.1%}); eavesdropper alarm raised")
        entries = study_entries()
        study = upload(self.a, B, "study", entries, entries[0][1].study_uid, wait=3.0, show_progress=False)
        _say(args, f"study queued at {A}: {study['state']} after 3 s (waiting for key that never comes)")
        inbox = self.reader.json("GET", "/v1/inbox")[1]["inbox"]
        link_b = self._link(self.b)
        link = self._link(self.a)
        return {
            "ok": study["state"] == "queued" and not inbox and link["pool_bits"] == 0 and link["alarm"],
            "eve": True,
            "rounds": link["rounds"],
            "last_abort": last["reason"],
            "qber": last["qber"],
            "alarm": {A: link["alarm"], B: link_b["alarm"]},
            "pool_bits": {A: link["pool_bits"], B: link_b["pool_bits"]},
            "study_state": study["state"],
            "inbox_at_b": len(inbox),
        }


def _token(deployment: Any, facility: str) -> str:
    from ..daemon_http import facility_config
    from ..data_http import token_path

    return token_path(facility_config(deployment.facilities[facility])).read_text().strip()


def format_summary(s: dict[str, Any]) -> str:
    verdict = "PASS" if s["ok"] else "FAIL"
    if s["eve"]:
        return "\n".join(
            [
                f"summary ({verdict}): eavesdropper detected, nothing sent",
                f"  rounds          {s['rounds']}",
                f"  last abort      {s['last_abort']} at QBER {s['qber']:.1%} (threshold 11 %)",
                f"  alarm           {s['alarm']}",
                f"  key in pools    {s['pool_bits']} bits",
                f"  study           {s['study_state']} in {A}'s outbox; "
                f"{s['inbox_at_b']} transfer(s) in {B}'s inbox",
            ]
        )
    st, ehr = s["study"], s["ehr"]
    return "\n".join(
        [
            f"summary ({verdict}):",
            f"  key ready       {s['first_key_s']:.2f} s after start ({MIN_OWNED_BITS:,} bits at each end)",
            f"  rounds          {s['rounds']}, last QBER {s['qber']:.2%}",
            f"  key produced    {s['key_bits_produced']:,} bits (final, after privacy amplification)",
            f"  DICOM study     {st['instances']} instances, {st['bytes']:,} bytes in "
            f"{st['seconds'] * 1e3:.1f} ms ({st['mbit_per_s']:,.1f} Mbit/s), at rest as {st['at_rest']}, "
            f"bit-exact: {st['bit_exact']}",
            f"  EHR messages    {ehr['messages']}, round trip to {B}'s inbox and back: "
            f"median {ehr['median_ms']:.2f} ms, "
            f"max {ehr['max_ms']:.2f} ms,"
            f" {ehr['one_time_pad']} under one-time pad, bit-exact: {ehr['bit_exact']}",
        ]
    )
