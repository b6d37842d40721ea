"""The rough edges of the `qlink` data commands against running daemons (issue 17, item 7): `ehr send` with
many files and stdin in one call, usage errors that exit 2, a bad transfer id, a closed stdout, and PNS
refused on a single-photon link. One loopback deployment (channel service and two facility daemons as real
processes) serves the module; the CLI runs as a real process where stdin, stdout or the exit status are
the point, in-process otherwise. Waits poll the daemons' APIs; nothing sleeps blindly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.data_http import DataTarget
from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.readers import reader_token, reader_token_file
from tests.cli import qlink
from tests.paths import DATA
from tests.polling import wait_for
from tests.testbeds import Testbeds

QLINK = [sys.executable, "-m", "qlinkmed.client"]
A, B = "hospital-a", "hospital-b"
PULSES = 700_000
KEY_BITS = 64_000
"""Key in both pools before the first message: a data session and one-time pads for a few messages."""


@dataclass(frozen=True, slots=True)
class Link:
    deployment: Deployment
    a: DataTarget
    b: DataTarget
    """B's inbox as read by a user with the testbed's all-data role (the facility token sends only)."""

    def config(self, facility: str) -> str:
        return str(self.deployment.facilities[facility])

    def reading(self) -> tuple[str, ...]:
        """`qlink inbox` flags for B's all-data reader."""
        return ("--user-token-file", str(reader_token_file(self.deployment, B)), "--config", self.config(B))


def _token(deployment: Deployment, facility: str) -> str:
    return (deployment.root / "state" / facility / "local-api.token").read_text().strip()


def _owned_bits(target: DataTarget) -> int:
    status, body = target.json("GET", "/v1/status")
    return int(body["links"][0]["pool_bits_owned"]) if status == 200 else 0


@pytest.fixture(scope="module")
def link(module_testbeds: Testbeds) -> Iterator[Link]:
    deployment = module_testbeds.launch(pulses_per_round=PULSES).deployment
    a = DataTarget(deployment.local_url(A), _token(deployment, A))
    b = DataTarget(deployment.local_url(B), reader_token(deployment, B))
    wait_for(lambda: _owned_bits(a) >= KEY_BITS and _owned_bits(b) >= KEY_BITS, "key in both pools")
    yield Link(deployment, a, b)
    a.close()
    b.close()


def _run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*QLINK, *args], input=stdin, capture_output=True, timeout=300, check=False)


def _outgoing(link: Link) -> list[dict[str, Any]]:
    status, body = link.a.json("GET", "/v1/transfers")
    assert status == 200, body
    return list(body["transfers"])


def _received(link: Link, tid: str) -> bytes:
    status, data, _ = link.b.request("GET", f"/v1/inbox/{tid}/files/0")
    assert status == 200, data
    return data


def test_ehr_send_takes_many_files_and_stdin_in_one_call(link: Link) -> None:
    # Regression: `qlink ehr send` took one file and no stdin, one process (0.8-1.1 s) a message.
    hl7, fhir = DATA / "oru_r01.hl7", DATA / "fhir_bundle.json"
    piped = hl7.read_bytes().replace(b"|QLT00001|", b"|QLT00002|", 1)  # another message, not the file again
    assert piped != hl7.read_bytes()
    proc = _run(
        "ehr", "send", "--to", B, str(hl7), "-", str(fhir), "--name", "piped.hl7", "--json",
        "--config", link.config(A),
        stdin=piped,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["file"] for r in results] == [str(hl7), "-", str(fhir)]  # one line a message, in order
    assert [r["state"] for r in results] == ["delivered"] * 3
    sent = (hl7.read_bytes(), piped, fhir.read_bytes())
    assert [_received(link, r["transfer_id"]) for r in results] == list(sent)
    status, entry = link.b.json("GET", f"/v1/inbox/{results[1]['transfer_id']}")
    assert status == 200 and entry["file_list"][0]["name"] == "piped.hl7"


def test_a_refused_message_fails_the_call_but_not_the_others(link: Link) -> None:
    bad, good = DATA / "fhir_bundle_invalid.json", DATA / "oru_r01.hl7"
    proc = _run("ehr", "send", "--to", B, str(bad), str(good), "--config", link.config(A))
    assert proc.returncode == 1
    (delivered,) = proc.stdout.decode().splitlines()
    assert delivered.startswith(f"delivered to {B}: ehr ")
    (refused,) = proc.stderr.decode().splitlines()
    assert refused.startswith("qlink ehr send: fhir_bundle_invalid.json: FHIR ")


def test_every_problem_of_a_refused_bundle_is_listed_by_where_it_is(link: Link, tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "gender": 5}},
            {"resource": {"resourceType": "Observation"}},
        ],
    }
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(bundle))
    proc = _run("ehr", "send", "--to", B, str(source), "--json", "--config", link.config(A))
    assert proc.returncode == 1
    (line,) = proc.stdout.decode().splitlines()
    where = [issue["expression"] for issue in json.loads(line)["issues"]]
    assert where == [
        ["Bundle.entry[0].resource.gender"],
        ["Bundle.entry[1].resource.code"],
        ["Bundle.entry[0].request"],
        ["Bundle.entry[1].request"],
    ]
    text = proc.stderr.decode().splitlines()
    assert text[0].startswith("qlink ehr send: bad.json: FHIR 4 issues:")
    assert text[1:] == [
        "  error at Bundle.entry[0].resource.gender: Input should be a valid string",
        "  error at Bundle.entry[1].resource.code: Field required",
        "  error at Bundle.entry[0].request: bdl-3a: each entry of a transaction must have a request",
        "  error at Bundle.entry[1].request: bdl-3a: each entry of a transaction must have a request",
    ]


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["ehr", "send", "--to", "hospital-z"], "unknown peer 'hospital-z'"),
        (["ehr", "send", "--to", B, "--wait", "601"], "wait must be in 0..600 s"),
        (["send", "--to", "hospital-z"], "unknown peer 'hospital-z'"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(
    command: list[str], named: str, link: Link, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: an unknown peer exited 1, as if the daemon had failed.
    from PIL import Image

    files = [str(DATA / "oru_r01.hl7"), str(DATA / "fhir_bundle.json")]
    if command[0] == "send":
        files = [str(tmp_path / "scan.png")]
        Image.new("L", (8, 8)).save(files[0])
    before = _outgoing(link)
    code, out, err = qlink(capsys, *command, *files, "--config", link.config(A))
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert named in line
    assert _outgoing(link) == before


@pytest.mark.parametrize("tid", [str(uuid.uuid4()), "nosuchid", "a b", "../../x", "a/b"])
def test_a_bad_transfer_id_is_no_such_transfer(
    tid: str, link: Link, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: "a b" and "../../x" were reported as "cannot reach qlinkd".
    code, out, err = qlink(capsys, "inbox", "fetch", tid, "--out", str(tmp_path), *link.reading())
    assert (code, out) == (1, "")
    assert err == f"qlink inbox fetch: HTTP 404: no transfer {tid!r} in the inbox\n"
    assert list(tmp_path.iterdir()) == []


def test_inbox_list_into_a_closed_pipe_exits_141_quietly(link: Link) -> None:
    # Regression: `qlink inbox list | head` printed a BrokenPipeError traceback.
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [*QLINK, "inbox", "list", *link.reading()],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")


def test_pns_on_a_single_photon_link_is_refused(link: Link, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: `qlink eve attach --kind pns` on a single-photon link was accepted and changed nothing.
    channel = str(link.deployment.channel)
    code, out, err = qlink(capsys, "eve", "attach", "--kind", "pns", "--channel-config", channel)
    assert (code, out) == (2, "")
    assert err == (
        "qlink eve attach: error: HTTP 400: kind: photon-number splitting needs multi-photon pulses (a "
        "decoy/WCP source: protocol bb84-decoy), and no link carried sends them: "
        f"{A}--{B} single-photon\n"
    )
    code, out, _ = qlink(capsys, "eve", "status", "--channel-config", channel, "--json")
    assert code == 0 and json.loads(out)["eve"]["kind"] == "none"
