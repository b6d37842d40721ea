"""Operator views with two facility daemons and the channel service as real processes on loopback, read
with httpx (an HTTP client that is not ours) and the `qlink` CLI: an eavesdropper's alarm latches through
good rounds and a daemon restart until `qlink alarm ack`; a peer that is down shows as a queue, a failing
sender and why, in status and metrics; what it then receives shows as unfetched until fetched."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from qlinkmed.qlinkd.testbed.deployment import Deployment
from qlinkmed.qlinkd.testbed.readers import reader_token_file
from tests.cli import qlink
from tests.paths import DATA
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
PULSES = 700_000


def _status(deployment: Deployment, facility: str) -> dict[str, Any]:
    return httpx.get(deployment.local_url(facility) + "/v1/status", timeout=5.0).json()


def _link(deployment: Deployment, facility: str) -> dict[str, Any]:
    return _status(deployment, facility)["links"][0]


def _queue(deployment: Deployment, facility: str) -> dict[str, Any]:
    (queue,) = _status(deployment, facility)["data_plane"]["queues"]
    return queue


def _metric(deployment: Deployment, facility: str, name: str, **labels: str) -> float | None:
    text = httpx.get(deployment.local_url(facility) + "/metrics", timeout=5.0).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


def _audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    path = deployment.root / "state" / facility / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_eavesdroppers_alarm_stays_raised_until_an_operator_acknowledges_it(
    testbeds: Testbeds, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = testbeds.write(pulses_per_round=PULSES)
    group = testbeds.start(deployment)
    config = str(deployment.facilities[A])
    wait_for(lambda: _link(deployment, A)["rounds"]["established"] > 0, "an honest round", timeout=60.0)
    assert _link(deployment, A)["alarm_latched"] is None
    httpx.post(
        deployment.admin_url + "/v1/eve",
        json={"kind": "intercept-resend", "fraction": 1.0},
        headers=deployment.admin_headers(),
    ).raise_for_status()
    raised = wait_for(
        lambda: (link := _link(deployment, A))["alarm_latched"] and link, "the alarm", timeout=60.0
    )
    assert raised["alarm_latched"]["reason"] == "qber_above_threshold"
    httpx.delete(deployment.admin_url + "/v1/eve", headers=deployment.admin_headers()).raise_for_status()
    established = raised["rounds"]["established"]
    resumed = wait_for(
        lambda: (
            (link := _link(deployment, A))["rounds"]["established"] > established
            and link["last_round"]["established"]
            and link
        ),
        "an honest round after the attack",
        timeout=60.0,
    )
    # The condition cleared with the good round; the latched alarm did not.
    assert resumed["alarm"] is None
    assert resumed["alarm_latched"]["raised_at"] == raised["alarm_latched"]["raised_at"]
    assert _metric(deployment, A, "qlink_alarm_latched", peer=B) == 1.0
    assert _metric(deployment, A, "qlink_eavesdropper_alarm", peer=B) == 0.0
    code, out, _ = qlink(capsys, "status", "--config", config)
    assert code == 0 and "ALARM" in out and f"qlink alarm ack --peer {B}" in out and "condition" in out

    # A restart keeps it raised.
    group.kill(A, signal.SIGTERM)
    group.start(A)
    group.wait_ready(A)
    latched = _link(deployment, A)["alarm_latched"]
    assert latched is not None and latched["raised_at"] == raised["alarm_latched"]["raised_at"]
    assert _metric(deployment, A, "qlink_alarm_latched", peer=B) == 1.0

    # Refusals: no token, a wrong token, an unknown peer; nothing is acknowledged by them.
    url = deployment.local_url(A)
    assert httpx.post(url + "/v1/alarm/ack", json={"who": "x"}, timeout=5.0).status_code == 401
    wrong = tmp_token(deployment.root, "not-the-token")
    code, _, err = qlink(capsys, "alarm", "ack", "--url", url, "--token-file", str(wrong))
    assert code == 1 and "bearer token" in err
    code, _, err = qlink(capsys, "alarm", "ack", "--config", config, "--peer", "hospital-z")
    assert code == 2 and "unknown peer 'hospital-z'" in err
    token = (deployment.root / "state" / A / "local-api.token").read_text().strip()
    for body, problem in (
        ({"peer": ["x"], "who": "x"}, "peer must be"),
        ({"who": ""}, "who must name"),
        ({"who": "x", "note": "n" * 501}, "note must be"),
        ([], "JSON object"),
    ):
        answer = httpx.post(
            url + "/v1/alarm/ack", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5.0
        )
        assert answer.status_code == 400 and problem in answer.json()["message"], (body, answer.text)
    assert _link(deployment, A)["alarm_latched"] is not None

    code, out, _ = qlink(capsys, "alarm", "ack", "--config", config, "--peer", B, "--note", "fibre checked")
    assert code == 0 and f"alarm on link {B} acknowledged: qber_above_threshold" in out
    assert _link(deployment, A)["alarm_latched"] is None
    assert _metric(deployment, A, "qlink_alarm_latched", peer=B) == 0.0
    (ack,) = [r for r in _audit(deployment, A) if r["event"] == "alarm_acknowledged"]
    assert ack["peer"] == B and ack["note"] == "fibre checked" and ack["who"] and ack["ts"]
    code, out, _ = qlink(capsys, "alarm", "ack", "--config", config)
    assert code == 0 and f"link {B}: no alarm raised" in out


def tmp_token(root: Path, text: str) -> Path:
    path = root / "wrong-token"
    path.write_text(text)
    return path


def test_a_peer_that_is_down_shows_as_a_queue_with_its_reason_then_as_unfetched(
    testbeds: Testbeds, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = testbeds.write(pulses_per_round=PULSES)
    group = testbeds.start(deployment)
    config = str(deployment.facilities[A])
    wait_for(lambda: _link(deployment, A)["pool_bits"] >= 4096, "key in the pool", timeout=60.0)
    group.kill(B, signal.SIGTERM)
    code, _, err = qlink(
        capsys, "ehr", "send", "--config", config, "--to", B, "--no-wait", str(DATA / "oru_r01.hl7")
    )
    assert code == 0, err
    queue = wait_for(
        lambda: (q := _queue(deployment, A))["failing_since"] and q["queued"] == 1 and q, "the failing sender"
    )
    assert queue["peer"] == B and queue["queued_bytes"] == (DATA / "oru_r01.hl7").stat().st_size
    assert queue["sender"].startswith("cannot reach") and queue["oldest_queued_age_s"] >= 0
    assert queue["stuck"] == 0 and queue["refused"] == 0  # ten minutes make it stuck (unit-tested)
    assert _metric(deployment, A, "qlink_data_queued", peer=B) == 1.0
    assert _metric(deployment, A, "qlink_data_queued_bytes", peer=B) == queue["queued_bytes"]
    assert (_metric(deployment, A, "qlink_data_sender_failing_seconds", peer=B) or 0) > 0
    code, out, _ = qlink(capsys, "status", "--config", config)
    assert code == 0 and "1 transfer(s)" in out and "FAILING since" in out and "cannot reach" in out
    code, out, _ = qlink(capsys, "status", "--config", config, "--json")
    assert json.loads(out)["data_plane"]["queues"][0]["queued"] == 1

    group.start(B)
    group.wait_ready(B)
    drained = wait_for(
        lambda: (q := _queue(deployment, A))["queued"] == 0 and q, "the queue drained", timeout=60
    )
    assert drained["failing_since"] is None and drained["oldest_queued_age_s"] is None
    assert _metric(deployment, A, "qlink_data_queued", peer=B) == 0.0
    held = _queue(deployment, B)
    assert held["peer"] == A and held["unfetched"] == 1 and held["oldest_unfetched_age_s"] >= 0
    assert _metric(deployment, B, "qlink_inbox_unfetched", peer=A) == 1.0
    config_b = str(deployment.facilities[B])
    code, out, _ = qlink(capsys, "status", "--config", config_b)
    assert code == 0 and "1 unfetched" in out
    reading = ("--user-token-file", str(reader_token_file(deployment, B)))  # the facility token sends only
    code, out, _ = qlink(capsys, "inbox", "list", "--config", config_b, *reading, "--json")
    (item,) = json.loads(out)["inbox"]
    code, _, err = qlink(
        capsys,
        "inbox",
        "fetch",
        item["transfer_id"],
        "--config",
        config_b,
        *reading,
        "--out",
        str(deployment.root / "got"),
    )
    assert code == 0, err
    assert _queue(deployment, B)["unfetched"] == 0
    assert _metric(deployment, B, "qlink_inbox_unfetched", peer=A) == 0.0
