"""`qlink status|keys|eve|testbed` against running daemons: one loopback deployment (channel service and two
facility daemons as real processes) for the module, the CLI run in-process through `main()` or as
`python -m qlinkmed.client`. Waits poll the daemons' own status with a deadline; nothing sleeps blindly."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.qlinkd.channel.config import load_channel_config
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.testbed.deployment import DEFAULT_DEPARTMENT, Deployment, free_ports, read_deployment
from tests.cli import qlink
from tests.polling import wait_for
from tests.testbeds import Testbeds

QLINK = [sys.executable, "-m", "qlinkmed.client"]
PULSES = 700_000
DEADLINE_S = 30.0
POLL_S = 0.1
"""How often `poll_link` asks: each poll is a whole `qlink status` run."""
A, B = "hospital-a", "hospital-b"


@pytest.fixture(scope="module")
def testbed(module_testbeds: Testbeds) -> Deployment:
    # A short round timeout bounds the stall when a round starts before both ends reach the channel.
    return module_testbeds.launch(pulses_per_round=PULSES, round_timeout_s=5.0).deployment


def poll_link(
    capsys: pytest.CaptureFixture[str], url: str, done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """`qlink status --json` until the (only) link satisfies `done`, and that link."""

    def satisfied() -> dict[str, Any] | None:
        code, out, err = qlink(capsys, "status", "--url", url, "--json")
        assert code == 0, err
        link: dict[str, Any] = json.loads(out)["links"][0]
        return link if done(link) else None

    return wait_for(satisfied, what, every=POLL_S)


def has_key(link: dict[str, Any]) -> bool:
    return link["pool_bits"] > 0


def test_status_json_is_the_api_answer_and_the_pool_grows(
    testbed: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    first = poll_link(capsys, testbed.local_url(A), has_key, "a first key")
    assert first["peer"] == B and first["role"] == "alice"
    grown = poll_link(
        capsys, testbed.local_url(A), lambda link: link["pool_bits"] > first["pool_bits"], "more key"
    )
    assert grown["last_committed_round"] > first["last_committed_round"]
    code, out, _ = qlink(capsys, "status", "--url", testbed.local_url(A) + "/", "--json")
    assert code == 0
    assert set(json.loads(out)) >= {"facility", "uptime_s", "saes", "links"}


def test_human_status_names_the_peer_and_counts_keys(
    testbed: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    poll_link(capsys, testbed.local_url(B), has_key, "a first key")
    code, out, err = qlink(capsys, "status", "--config", str(testbed.facilities[B]))
    assert code == 0, err
    assert out.startswith(f"facility {B},")
    assert f"link {A}" in out
    assert "role          bob (bb84)" in out
    assert "keys of 256 bits" in out
    for label in ("auth reserve", "rounds", "last round", "starvation"):
        assert f"  {label}" in out, label
    assert "ALARM" not in out


def test_no_arguments_show_status_when_qlink_config_is_set(
    testbed: Deployment, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLINK_CONFIG", str(testbed.facilities[A]))
    code, out, _ = qlink(capsys)
    assert code == 0
    assert out.startswith(f"facility {A},") and f"link {B}" in out
    monkeypatch.delenv("QLINK_CONFIG")
    code, out, _ = qlink(capsys)
    assert code == 0
    assert out.startswith("usage: qlink")


def test_keys_reports_the_pool_of_each_peer(testbed: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    poll_link(capsys, testbed.local_url(B), has_key, "a first key")
    code, out, err = qlink(capsys, "keys", "--url", testbed.local_url(B), "--json")
    assert code == 0, err
    keys = json.loads(out)
    assert keys["facility"] == B
    (pool,) = keys["pools"]
    assert pool["peer"] == A
    assert pool["keys_available"] == pool["owned_bits"] // pool["key_size_bits"]
    assert pool["last_committed_round"] > 0
    code, out, _ = qlink(capsys, "keys", "--config", str(testbed.facilities[B]))
    assert code == 0
    assert f"pool {B} <-> {A}" in out
    assert f"owned by {B}" in out and "keys of 256 bits available" in out


def _detach(deployment: Deployment) -> None:
    request = urllib.request.Request(
        deployment.admin_url + "/v1/eve", method="DELETE", headers=deployment.admin_headers()
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def test_eve_attach_aborts_rounds_and_detach_clears_the_alarm(
    testbed: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    url = testbed.local_url(A)
    poll_link(capsys, url, has_key, "a first key")
    token_file = load_channel_config(testbed.channel).admin_token_path
    try:
        # The token comes from the channel configuration's state_dir, or from --token-file with --admin.
        code, out, err = qlink(capsys, "eve", "attach", "--channel-config", str(testbed.channel))
        assert code == 0, err
        assert "eavesdropper    intercept-resend on 100% of the pulses" in out
        code, out, _ = qlink(capsys, "eve", "status", "--admin", testbed.admin_url, "--json")
        assert code == 0
        assert json.loads(out)["eve"] == {"kind": "intercept-resend", "fraction": 1.0}

        def alarmed(link: dict[str, Any]) -> bool:
            last = link["last_round"] or {}
            return last.get("reason") == "qber_above_threshold" and link["alarm"] == "qber_above_threshold"

        link = poll_link(capsys, url, alarmed, "an abort for QBER with the alarm set")
        assert link["last_round"]["established"] is False

        def status_text() -> str:
            code, out, _ = qlink(capsys, "status", "--url", url)
            assert code == 0
            return out

        # Polled, not read once: with rounds in flight, a round the channel served before the attach may
        # still be established after the first abort, and be the last round for a moment.
        wait_for(lambda: "ABORTED (qber_above_threshold)" in status_text(), "the text view showing the abort")
        assert "  ALARM         qber_above_threshold" in status_text()

        code, out, err = qlink(
            capsys, "eve", "detach", "--admin", testbed.admin_url, "--token-file", str(token_file), "--json"
        )
        assert code == 0, err
        assert json.loads(out)["eve"]["kind"] == "none"
        link = poll_link(
            capsys,
            url,
            lambda link: bool(link["last_round"]["established"]) and link["alarm"] is None,
            "an established round after the detach",
        )
        assert link["last_round"]["qber"] < 0.11
    finally:
        _detach(testbed)
    code, out, _ = qlink(capsys, "eve", "status", "--admin", testbed.admin_url)
    assert code == 0
    assert out.startswith("eavesdropper    none")


@pytest.mark.parametrize("command", [["status"], ["keys"]])
def test_unreachable_daemon_exits_1_with_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    code, out, err = qlink(capsys, *command, "--url", f"http://127.0.0.1:{port}")
    assert code == 1
    assert out == ""
    assert err.splitlines() == [f"qlink: cannot reach qlinkd at http://127.0.0.1:{port}: Connection refused"]


def test_eve_changes_without_the_right_token_are_refused(
    testbed: Deployment, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Regression (issue 14, item 4): the admin API attached an eavesdropper for anyone who asked.
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    code, out, err = qlink(capsys, "eve", "attach", "--admin", testbed.admin_url, "--token-file", str(wrong))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"qlink: the channel service at {testbed.admin_url} refused the request: HTTP 401: POST needs "
        "Authorization: Bearer <token>, the token in state_dir/admin-api.token"
    ]
    code, out, err = qlink(capsys, "eve", "attach", "--admin", testbed.admin_url)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "qlink eve attach: error: --admin needs --token-file (or use --channel-config)"
    ]
    missing = tmp_path / "missing.token"
    code, out, err = qlink(
        capsys, "eve", "detach", "--admin", testbed.admin_url, "--token-file", str(missing)
    )
    assert (code, out) == (2, "")
    assert err.startswith(
        f"qlink eve detach: error: cannot read the channel admin token {missing}: No such file"
    )
    code, out, _ = qlink(capsys, "eve", "status", "--admin", testbed.admin_url, "--json")
    assert code == 0 and json.loads(out)["eve"]["kind"] == "none"  # nothing attached; reading needs no token


def test_unreachable_channel_service_exits_1_as_a_real_process(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    token = tmp_path / "admin-api.token"
    token.write_text("some-token\n")
    proc = subprocess.run(
        [*QLINK, "eve", "attach", "--admin", f"http://127.0.0.1:{port}", "--token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"qlink: cannot reach the channel service at http://127.0.0.1:{port}: Connection refused"
    ]


@pytest.mark.parametrize("fraction", ["1.5", "-0.1", "nan", "half"])
def test_bad_fraction_exits_2_with_one_line(fraction: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = qlink(capsys, "eve", "attach", "--admin", "http://127.0.0.1:9", "--fraction", fraction)
    assert code == 2
    assert out == ""
    (line,) = err.splitlines()
    assert "--fraction" in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["status"], "--config FILE, --url URL or $QLINK_CONFIG"),
        (["status", "--url", "ftp://127.0.0.1:1"], "--url"),
        (["keys", "--url", "http://127.0.0.1:1/v1/keys"], "--url"),
        (["status", "--config", "/nonexistent/qlink.toml"], "config error: /nonexistent/qlink.toml"),
        (["status", "--config", "a.toml", "--url", "http://127.0.0.1:1"], "not allowed with"),
        (["eve", "status"], "--channel-config"),
        (["eve", "attach", "--admin", "http://127.0.0.1:1", "--kind", "martian"], "--kind"),
        (["testbed", "init", "/tmp/x", "--pulses", "5"], "--pulses"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QLINK_CONFIG", raising=False)
    code, _, err = qlink(capsys, *args)
    assert code == 2
    (line,) = err.splitlines()
    assert named in line


def test_testbed_init_writes_a_deployment_and_prints_the_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    code, out, err = qlink(capsys, "testbed", "init", str(root), "--protocol", "e91", "--pulses", "2e4")
    assert code == 0, err
    assert f"  qlink-channel --config {root}/channel.toml\n" in out
    assert f"  qlinkd --config {root}/{A}.toml\n" in out
    assert f"  qlinkd --config {root}/{B}.toml\n" in out
    assert f"  qlink testbed run {root}\n" in out
    deployment = read_deployment(root)
    assert set(deployment.facilities) == {A, B}
    peer = load_facility_config(deployment.facilities[A]).peers[0]
    assert (peer.id, peer.protocol.value, peer.pulses_per_round) == (B, "e91", 20_000)
    # Every arrival is listed with a department: the facilities' [departments] default.
    for config in deployment.facilities.values():
        departments = load_facility_config(config).departments
        assert departments is not None and departments.default == DEFAULT_DEPARTMENT
    code, _, err = qlink(capsys, "testbed", "init", str(root))
    assert code == 2
    assert "not an empty directory" in err


def _read_until(proc: subprocess.Popen[str], done: Callable[[str], bool], deadline: float) -> list[str]:
    """Lines of proc's stdout up to and including the first for which `done` holds."""
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None, "the process must be started with stdout=PIPE"
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("testbed output not seen in time:\n" + "".join(lines))
            if not selector.select(remaining):
                continue
            line = stdout.readline()
            if not line:
                pytest.fail(f"testbed run exited with {proc.wait()}:\n" + "".join(lines))
            lines.append(line)
            if done(line):
                return lines


def test_testbed_run_streams_status_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    assert qlink(capsys, "testbed", "init", str(root), "--pulses", str(PULSES))[0] == 0
    deployment = read_deployment(root)
    proc = subprocess.Popen(
        [*QLINK, "testbed", "run", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        head = _read_until(proc, lambda line: line.startswith(f"  {B}  local"), deadline)
        assert f"  channel admin  {deployment.admin_url}\n" in head
        assert f"  {A}  local {deployment.local_url(A)}  kme {deployment.kme_url(A)}\n" in head
        status = _read_until(proc, lambda line: f"{A} -> {B}" in line and "last QBER -" not in line, deadline)
        assert " pool " in status[-1] and " bits " in status[-1]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the testbed and the daemons it started: no orphans
            proc.wait()
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("testbed stopped")
    # Every process of the testbed is gone: its local API no longer answers.
    code, _, err = qlink(capsys, "status", "--url", deployment.local_url(A))
    assert code == 1 and "cannot reach qlinkd" in err


def test_human_status_shows_chsh_alarm_and_starvation() -> None:
    from qlinkmed.client.commands.status import format_status

    link = {
        "peer": B,
        "role": "alice",
        "protocol": "e91",
        "eps_sec": 1e-9,
        "eps_cor": 1e-12,
        "eps": 1.001e-9,
        "connected": True,
        "channel_connected": False,
        "state": "up",
        "pool_bits": 1024,
        "pool_bits_owned": 512,
        "auth_reserve_bits": 0,
        "low_watermark_bits": 12_000,
        "high_watermark_bits": 30_000,
        "rounds_paused": False,
        "last_committed_round": 3,
        "rounds": {"established": 3, "aborted": 1},
        "last_round": {
            "round": 4,
            "established": False,
            "reason": "chsh_below_threshold",
            "detail": "CHSH 2.1 below 2.5",
            "duration_s": 0.5,
            "qber": 0.2,
            "qber_upper": 0.25,
            "chsh_s": 2.1,
            "chsh_lower": 1.9,
            "raw_key_bits": 9_000,
            "leaked_ec_bits": 1_200,
            "final_key_bits": 0,
            "round_trips": 5,
            "eps_sec": 1e-9,
            "eps_cor": 1e-12,
            "eps": 1.001e-9,
        },
        "alarm": "chsh_below_threshold",
        "auth_starved": True,
        "rounds_in_flight": 3,
        "rounds_window": 8,
        "down_since": "2026-12-06T17:00:00+00:00",
        "down_reason": "peer closed the connection",
    }
    text = format_status({"facility": A, "uptime_s": 5, "saes": [], "links": [link]}, {B: 256})
    assert "  rounds open   3 of 8" in text
    assert "since 2026-12-06T17:00:00+00:00: peer closed the connection" in text
    assert "1,024 bits = 4 keys of 256 bits" in text
    assert "channel NOT connected" in text
    assert "#4 ABORTED (chsh_below_threshold): QBER 20.00% (upper bound 25.00%), CHSH 2.100 +- 0.200" in text
    assert "CHSH 2.1 below 2.5" in text
    assert "  ALARM         chsh_below_threshold" in text
    assert "STARVED" in text
    # The deployer's security parameters and their total, as the daemon reports them.
    assert "  security      eps_sec 1e-09, eps_cor 1e-12: keys 1.001e-09-secure" in text


def test_human_status_shows_what_the_gateways_owe_and_how_to_release_parked_forwards() -> None:
    from qlinkmed.client.commands.status import format_status

    gateways = {
        "mllp": {"listen": "127.0.0.1:2575"},
        "destinations": [
            {
                "gateway": "mllp",
                "destination": "engine",
                "pending": 3,
                "parked": 1,
                "delivered": 1200,
                "oldest_pending": time.time() - 600,
                "last_error": "ConnectionRefusedError: [Errno 111] Connection refused",
            },
            {"gateway": "dicom", "destination": "PACS", "pending": 0, "parked": 0, "delivered": 5},
        ],
    }
    text = format_status({"facility": A, "uptime_s": 5, "saes": [], "links": [], "gateways": gateways})
    assert "gateways mllp" in text
    assert "mllp -> engine        3 pending, oldest 10 min, 1,200 delivered, 1 parked" in text
    assert "retrying: ConnectionRefusedError" in text
    assert "qlink forward release mllp --destination engine" in text
    assert "dicom -> PACS         0 pending, 5 delivered, 0 parked" in text
    assert text.count("PARKED") == 1
