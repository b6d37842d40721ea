"""`qlink demo [--eve]`: the whole product in one command, nothing to configure.

It writes a loopback deployment with every hospital gateway enabled into a temporary directory (CA,
certificates, pre-shared key), starts the quantum-channel service and two facility daemons, and plays
the hospital systems around them (`client/demo_peers.py`): hospital-b's PACS, interface engine and FHIR
server. Once there is quantum key, a modality C-STOREs a real DICOM study (pydicom's bundled MR study) to
hospital-a's DICOM gateway and it must arrive at hospital-b's PACS byte for byte; an engine sends an HL7
ADT message over MLLP to hospital-a, which must ACK it AA, and it must arrive at hospital-b's engine, whose
ACK hospital-b records. Then the study and EHR messages are sent through the local API, fetched back out
of hospital-b's inbox and checked byte for byte, and a summary shows each leg with its times. With --eve
an intercept-resend eavesdropper sits on the fibre from the start: every round aborts on its QBER, no key
reaches the pools, and the study and the message are accepted at hospital-a but wait in its outbox:
nothing is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..daemon_http import ApiError

if TYPE_CHECKING:
    from ..demo_peers import Engine, FhirServer, Pacs

EXIT_OK, EXIT_FAILURE = 0, 1
STUDY_DIR = "dicomdirtests/98892003"
"""pydicom's bundled 11-instance MR study (explicit VR little endian, native pixel data)."""
A, B = "hospital-a", "hospital-b"
EHR_REPEATS = 20
MODALITY_AE = "DEMO_MR01"
"""The AE title the demo's modality calls from."""
ADT_CONTROL_ID = "QLINKDEMO0001"
ADT = (
    b"MSH|^~\\&|ADT|HOSPITAL-A|ENGINE|HOSPITAL-B|20261124093000||ADT^A01^ADT_A01|"
    + ADT_CONTROL_ID.encode()
    + b"|P|2.5\r"
    b"EVN|A01|20261124093000\r"
    b"PID|1||MRN-000451^^^HOSPA^MR||EXAMPLE^DANA||19710314|F\r"
    b"PV1|1|I|RAD^101^1\r"
)
"""The HL7 v2.5 ADT^A01 (admission) the demo's engine sends to hospital-a. A fictitious patient."""
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
    from qlinkmed.qlinkd.testbed.deployment import pacs_ae_title, write_loopback_deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

    from ..demo_peers import Engine, FhirServer, Pacs

    _say(args, f"qlink demo: deployment in {root}" + (" (eavesdropper on the fibre)" if args.eve else ""))
    deployment = write_loopback_deployment(
        root, pulses_per_round=700_000, eve="intercept-resend" if args.eve else "none", gateways=True
    )
    group = ProcessGroup(deployment)
    with contextlib.ExitStack() as peers:
        try:
            # hospital-b's own systems, up before its daemon forwards anything to them.
            pacs = Pacs(pacs_ae_title(B), deployment.ports[f"{B}.pacs"])
            peers.callback(pacs.stop)
            engine = Engine(deployment.ports[f"{B}.engine"])
            peers.callback(engine.stop)
            fhir = FhirServer(deployment.ports[f"{B}.fhir_server"])
            peers.callback(fhir.stop)
            peers.callback(group.stop_all)  # runs first: the daemons stop before their destinations
            started = time.monotonic()
            group.start_all(timeout=args.timeout)
            _say(args, f"channel service and both daemons ready in {time.monotonic() - started:.2f} s")
            demo = _Demo(deployment, args, pacs=pacs, engine=engine, fhir=fhir)
            summary = demo.with_eve() if args.eve else demo.honest()
        except (TimeoutError, RuntimeError, OSError, ApiError) as exc:
            print(f"qlink demo: {str(exc).splitlines()[0]}", file=sys.stderr)
            print(
                f"qlink demo: logs are in {root}/*.log" + ("" if args.keep else " (use --keep DIR)"),
                file=sys.stderr,
            )
            return EXIT_FAILURE
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return EXIT_OK if summary["ok"] else EXIT_FAILURE


class _Demo:
    def __init__(
        self, deployment: Any, args: argparse.Namespace, *, pacs: Pacs, engine: Engine, fhir: FhirServer
    ) -> None:
        from ..data_http import DataTarget

        self.deployment = deployment
        self.args = args
        self.a = DataTarget(deployment.local_url(A), _token(deployment, A))
        self.b = DataTarget(deployment.local_url(B), _token(deployment, B))
        self.pacs, self.engine, self.fhir = pacs, engine, fhir

    def _engine_delivered(self) -> int:
        """How many HL7 messages hospital-b's forwarding ledger has delivered to its engine (its ACK AA)."""
        destinations = self._status(self.b).get("gateways", {}).get("destinations", [])
        return sum(d["delivered"] for d in destinations if d["gateway"] == "mllp")

    def modality_sends(self, files: list[Path]) -> dict[str, Any]:
        """A modality C-STOREs `files` to hospital-a's DICOM gateway, calling the title routed to B."""
        from qlinkmed.qlinkd.testbed.deployment import route_ae_title, scp_ae_title

        from ..demo_peers import c_store

        t = time.monotonic()
        statuses = c_store(
            self.deployment.ports[f"{A}.dicom"], route_ae_title(B), MODALITY_AE, files, self.args.timeout
        )
        return {
            "scp_ae_title": scp_ae_title(A),
            "called_ae": route_ae_title(B),
            "calling_ae": MODALITY_AE,
            "instances": len(files),
            "success": sum(1 for status in statuses if status == 0x0000),
            "statuses": sorted({f"0x{status:04X}" for status in statuses}),
            "stored_at_a_ms": round((time.monotonic() - t) * 1e3, 1),
            "started": t,
        }

    def engine_sends(self) -> dict[str, Any]:
        """An interface engine sends the ADT message over MLLP to hospital-a and reads its ACK."""
        import hl7

        from ..demo_peers import mllp_send

        t = time.monotonic()
        ack = mllp_send(self.deployment.ports[f"{A}.mllp"], ADT, self.args.timeout)
        acked_ms = (time.monotonic() - t) * 1e3
        msa = hl7.parse(ack.decode("utf-8", "replace")).segment("MSA")
        return {
            "control_id": ADT_CONTROL_ID,
            "ack": str(msa[1]),
            "ack_control_id": str(msa[2]),
            "acked_ms": round(acked_ms, 2),
            "started": t,
        }

    def dicom_leg(self, files: list[Path]) -> dict[str, Any]:
        """The study from the modality at A to the PACS at B: C-STORE, then arrival, byte for byte."""
        from ..demo_peers import dataset_bytes

        leg = self.modality_sends(files)
        if leg["success"] != len(files):
            raise RuntimeError(f"hospital-a's DICOM gateway answered {leg['statuses']} to the modality")
        _say(
            self.args,
            f"modality C-STOREd {len(files)} instances to {leg['scp_ae_title']} (called {leg['called_ae']}): "
            f"all Success in {leg['stored_at_a_ms']:.1f} ms",
        )
        expected = {_sop_instance_uid(path): path for path in files}
        arrived = _wait_for(
            lambda: (found := self.pacs.instances()).keys() >= expected.keys() and found,
            self.args.timeout,
            f"the study at {B}'s PACS",
        )
        exact = all(
            arrived[uid].dataset == dataset_bytes(path)
            and arrived[uid].transfer_syntax == _transfer_syntax(path)
            for uid, path in expected.items()
        )
        last = max(arrived[uid].at for uid in expected)
        leg["at_pacs_ms"] = round((last - leg.pop("started")) * 1e3, 1)
        leg["pacs_ae_title"] = self.pacs.ae_title
        leg["bit_exact"] = exact
        _say(
            self.args,
            f"  at {B}'s PACS ({self.pacs.ae_title}) after {leg['at_pacs_ms']:.1f} ms, bit-exact: {exact}",
        )
        return leg

    def hl7_leg(self) -> dict[str, Any]:
        """The ADT message from an engine at A to the engine at B: ACK AA at A, arrival, B's ledger."""
        leg = self.engine_sends()
        if leg["ack"] != "AA":
            raise RuntimeError(f"hospital-a answered the HL7 message {leg['ack']}, not AA")
        _say(
            self.args,
            f"HL7 ADT^A01 {ADT_CONTROL_ID} sent over MLLP to {A}: "
            f"ACK {leg['ack']} in {leg['acked_ms']:.2f} ms",
        )
        message, at = _wait_for(
            lambda: self.engine.message(ADT_CONTROL_ID), self.args.timeout, f"the HL7 message at {B}'s engine"
        )
        _wait_for(lambda: self._engine_delivered() >= 1, self.args.timeout, f"{B} to record its engine's ACK")
        recorded = time.monotonic()
        started = leg.pop("started")
        leg["at_engine_ms"] = round((at - started) * 1e3, 1)
        leg["engine_ack_recorded_ms"] = round((recorded - started) * 1e3, 1)
        leg["identical"] = message.encode().rstrip(b"\r") == ADT.rstrip(b"\r")
        _say(
            self.args,
            f"  at {B}'s interface engine after {leg['at_engine_ms']:.1f} ms, identical: {leg['identical']}; "
            f"its ACK AA recorded by {B} at {leg['engine_ack_recorded_ms']:.1f} ms",
        )
        return leg

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
        # The hospital's path first, so the PACS's first copy of each instance is the modality's.
        dicom_gateway = self.dicom_leg(files)
        hl7_gateway = self.hl7_leg()

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
        # hospital-b forwards what the local API sent too: the ORU messages to its engine (besides the ADT),
        # the FHIR Bundles to its FHIR server.
        fhir_sent = (EHR_REPEATS + 1) // 2
        _wait_for(
            lambda: (
                self._engine_delivered() >= 1 + EHR_REPEATS - fhir_sent and len(self.fhir.posts) >= fhir_sent
            ),
            args.timeout,
            f"{B} to forward the EHR messages to its engine and FHIR server",
        )
        forwarded = {"engine_hl7": self._engine_delivered(), "fhir_server": len(self.fhir.posts)}
        metrics_a = self._metrics(self.a)
        link = self._link(self.a)
        return {
            "ok": exact
            and exact_ehr
            and dicom_gateway["bit_exact"]
            and hl7_gateway["identical"]
            and hl7_gateway["ack_control_id"] == ADT_CONTROL_ID,
            "eve": False,
            "dicom_gateway": dicom_gateway,
            "hl7_gateway": hl7_gateway,
            "forwarded": forwarded,
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
        # The hospital's systems are answered as ever (the study and the message are durable at A), but
        # nothing leaves A: checked after the 3 s the upload below waits.
        dicom_gateway = self.modality_sends([p for p, _ in entries])
        dicom_gateway.pop("started")
        hl7_gateway = self.engine_sends()
        hl7_gateway.pop("started")
        _say(
            args,
            f"modality C-STORE to {A}: {dicom_gateway['success']} of {dicom_gateway['instances']} Success; "
            f"HL7 ADT^A01: ACK {hl7_gateway['ack']} (both wait in {A}'s outbox)",
        )
        study = upload(self.a, B, "study", entries, entries[0][1].study_uid, wait=3.0, show_progress=False)
        _say(args, f"study queued at {A}: {study['state']} after 3 s (waiting for key that never comes)")
        dicom_gateway["at_pacs"] = len(self.pacs.instances())
        hl7_gateway["at_engine"] = len(self.engine.messages)
        inbox = self.reader.json("GET", "/v1/inbox")[1]["inbox"]
        # The modality's study, the ADT message and the uploaded study, each one transfer waiting for key.
        queued_at_a = sum(q["queued"] for q in self._status(self.a)["data_plane"]["queues"])
        link_b = self._link(self.b)
        link = self._link(self.a)
        return {
            "ok": study["state"] == "queued"
            and not inbox
            and link["pool_bits"] == 0
            and link["alarm"]
            and dicom_gateway["at_pacs"] == 0
            and hl7_gateway["at_engine"] == 0
            and queued_at_a == 3,
            "eve": True,
            "queued_at_a": queued_at_a,
            "dicom_gateway": dicom_gateway,
            "hl7_gateway": hl7_gateway,
            "rounds": link["rounds"],
            "last_abort": last["reason"],
            "qber": last["qber"],
            "alarm": {A: link["alarm"], B: link_b["alarm"]},
            "pool_bits": {A: link["pool_bits"], B: link_b["pool_bits"]},
            "study_state": study["state"],
            "inbox_at_b": len(inbox),
        }


def _sop_instance_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _transfer_syntax(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _token(deployment: Any, facility: str) -> str:
    from ..daemon_http import facility_config
    from ..data_http import token_path

    return token_path(facility_config(deployment.facilities[facility])).read_text().strip()


def format_summary(s: dict[str, Any]) -> str:
    verdict = "PASS" if s["ok"] else "FAIL"
    dg, hl7 = s["dicom_gateway"], s["hl7_gateway"]
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
                f"  outbox          {s['queued_at_a']} transfers queued at {A} (the modality's study, "
                "the ADT message, the uploaded study)",
                f"  DICOM gateway   {dg['success']} of {dg['instances']} instances stored at {A} (Success), "
                f"{dg['at_pacs']} at {B}'s PACS",
                f"  HL7 v2 (MLLP)   ADT^A01 ACK {hl7['ack']} at {A}, "
                f"{hl7['at_engine']} message(s) at {B}'s engine",
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
            f"  DICOM gateway   modality {dg['calling_ae']} -> {dg['scp_ae_title']} "
            f"(called {dg['called_ae']}): {dg['success']} of {dg['instances']} Success in "
            f"{dg['stored_at_a_ms']:.1f} ms; at {B}'s PACS {dg['pacs_ae_title']} after "
            f"{dg['at_pacs_ms']:.1f} ms, bit-exact: {dg['bit_exact']}",
            f"  HL7 v2 (MLLP)   ADT^A01 {hl7['control_id']}: ACK {hl7['ack']} from {A} in "
            f"{hl7['acked_ms']:.2f} ms; at {B}'s engine after {hl7['at_engine_ms']:.1f} ms, identical: "
            f"{hl7['identical']}; engine's ACK recorded at {hl7['engine_ack_recorded_ms']:.1f} ms",
            f"  forwarded       {B}'s engine acknowledged {s['forwarded']['engine_hl7']} HL7 messages, "
            f"its FHIR server took {s['forwarded']['fhir_server']} FHIR messages",
        ]
    )
