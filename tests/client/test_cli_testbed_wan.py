"""`qlink testbed init --wan-proxies`, `testbed run --wan` and `testbed wan`: a testbed whose links run
through the WAN emulator, cut and restored from another "shell" (the CLI run in-process while `testbed
run` is a real process), bad options and bad control commands refused with one line, and a second signal
while the testbed stops no longer cutting its cleanup short."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.client.commands.testbed import _sigterm_stops, _start_wan, _Stop, wan_addresses
from qlinkmed.qlinkd.testbed.deployment import read_deployment, write_loopback_deployment
from qlinkmed.qlinkd.testbed.wan import WanSpec
from qlinkmed.qlinkd.testbed.wan_links import CONTROL_SOCKET
from tests.cli import qlink
from tests.client.test_cli_daemon import QLINK, _read_until
from tests.polling import wait_for

A, B = "hospital-a", "hospital-b"
PULSES = 200_000
DEADLINE_S = 60.0


def _links(capsys: pytest.CaptureFixture[str], root: Path) -> dict[str, dict[str, Any]]:
    code, out, err = qlink(capsys, "testbed", "wan", str(root), "status", "--json")
    assert code == 0, err
    return {link["name"]: link for link in json.loads(out)["links"]}


def test_testbed_run_with_wan_is_cut_and_restored_from_another_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    code, out, err = qlink(capsys, "testbed", "init", str(root), "--pulses", str(PULSES), "--wan-proxies")
    assert code == 0, err
    assert f"  qlink testbed wan {root} cut|restore|status\n" in out
    deployment = read_deployment(root)
    classical = deployment.routes["classical"]
    proc = subprocess.Popen(
        [*QLINK, "testbed", "run", str(root), "--wan", "2ms,1ms", "--wan-seed", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        head = _read_until(proc, lambda line: line.startswith("  (qlink testbed wan "), deadline)
        assert (
            f"  WAN emulation  2 ms one way, jitter 1 ms, each direction; control {root}/wan.sock\n" in head
        )
        assert (
            f"  wan classical            {A} -> 127.0.0.1:{classical.port} -> "
            f"{B} classical 127.0.0.1:{classical.target}\n"
        ) in head
        # A round committed: its messages crossed the classical proxy both ways.
        _read_until(proc, lambda line: f"{A} -> {B}" in line and "last QBER -" not in line, deadline)
        links = _links(capsys, root)
        assert links["classical"]["upstream_delivered"] > 0 and links["classical"]["downstream_delivered"] > 0
        assert {link["cut"] for link in links.values()} == {False}

        code, out, err = qlink(capsys, "testbed", "wan", str(root), "cut")
        assert code == 0, err
        assert out.splitlines()[0] == "WAN emulation: 2 ms one way, jitter 1 ms, each direction"
        assert f"  classical          {A} -> {B}  CUT  (cut)  connections " in out
        assert out.count("CUT  (cut)") == 3
        _read_until(proc, lambda line: "wan: cut (all links)" in line, deadline)

        def held() -> dict[str, Any] | None:
            link = _links(capsys, root)["classical"]
            read, delivered = link["upstream_read"], link["upstream_delivered"]
            return (
                link if read > delivered or link["downstream_read"] > link["downstream_delivered"] else None
            )

        wait_for(held, "bytes the partition holds")
        code, out, err = qlink(capsys, "testbed", "wan", str(root), "restore", "--classical")
        assert code == 0, err
        assert f"  classical          {A} -> {B}  up   (up)" in out
        assert out.count("CUT  (cut)") == 2  # the data links stay cut
        code, out, err = qlink(capsys, "testbed", "wan", str(root), "flap", "--period", "2", "--down", "0.5")
        assert code == 0, err
        assert out.count("(flapping 2/0.5 s)") == 3
        _read_until(proc, lambda line: "wan: flap 2/0.5 s (all links)" in line, deadline)
        code, out, err = qlink(capsys, "testbed", "wan", str(root), "restore")
        assert code == 0, err
        assert out.count("  up   (up)") == 3
        at_restore = _links(capsys, root)["classical"]["downstream_delivered"]
        wait_for(
            lambda: _links(capsys, root)["classical"]["downstream_delivered"] > at_restore,
            "the classical link carrying again",
        )
        # Two SIGTERMs back to back, as timeout(1) sends them (the child, then its process group).
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the testbed and the daemons it started: no orphans
            proc.wait()
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("testbed stopped")
    assert not (root / CONTROL_SOCKET).exists()
    code, _, err = qlink(capsys, "status", "--url", deployment.local_url(A))
    assert code == 1 and "cannot reach qlinkd" in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "DIR", "--wan", "25"], "argument --wan: delay: '25' is not a time such as 25ms"),
        (["run", "DIR", "--wan", "25ms,1ms,2"], "argument --wan: loss: '2' is not a loss"),
        (["wan", "DIR", "nuke"], "invalid choice: 'nuke'"),
        (["wan", "DIR", "flap", "--period", "2"], "flap needs --period S and --down S"),
        (
            ["wan", "DIR", "flap", "--period", "1", "--down", "2"],
            "--down (2 s) must be shorter than --period",
        ),
        (["wan", "DIR", "flap", "--period", "0", "--down", "1"], "argument --period: must be a number"),
        (["wan", "DIR", "flap", "--period", "nan", "--down", "1"], "argument --period: must be a number"),
        (["wan", "DIR", "cut", "--down", "1"], "--period and --down go with flap only"),
        (["wan", "DIR", "status", "--classical"], "--classical goes with cut, restore and flap"),
    ],
)
def test_bad_wan_options_exit_2_with_one_line(
    args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path) if a == "DIR" else a for a in args]
    code, out, err = qlink(capsys, "testbed", *argv)
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert named in line


def test_wan_on_a_testbed_without_proxy_ports_or_not_running_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tb"
    assert qlink(capsys, "testbed", "init", str(root), "--pulses", str(PULSES))[0] == 0
    assert read_deployment(root).routes == {}
    code, out, err = qlink(capsys, "testbed", "run", str(root), "--wan", "5ms")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"qlink testbed run: error: --wan needs WAN proxy ports: {root} was written without them "
        "(write a new one with `qlink testbed init DIR --wan-proxies`)"
    ]
    code, out, err = qlink(capsys, "testbed", "wan", str(root), "cut")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"qlink testbed wan: error: no `qlink testbed run --wan` serves {root} (cannot connect to "
        f"{root}/{CONTROL_SOCKET}: No such file or directory)"
    ]


def test_run_without_wan_on_a_proxied_testbed_runs_the_proxies_with_no_delay(tmp_path: Path) -> None:
    deployment = write_loopback_deployment(tmp_path / "tb", wan_proxies=True)
    links = _start_wan(deployment, argparse.Namespace(wan=None, wan_seed=None))
    try:
        assert links.spec == WanSpec(delay_s=0.0)
        assert links.control == deployment.root / CONTROL_SOCKET
        assert f"{deployment.routes['classical'].port}" in wan_addresses(links)
    finally:
        links.close()


def test_a_second_signal_while_the_testbed_stops_is_ignored() -> None:
    # Regression: the first SIGTERM stopped `testbed run`, but the handlers were restored before its
    # cleanup, so the second one timeout(1) sends (to the process group) killed it half way and left the
    # daemons running, orphaned. Now a signal while stopping is ignored until the guard ends.
    finished = False
    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_stops():
        with pytest.raises(_Stop):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the cleanup goes on
        finished = True
    assert finished
    assert signal.getsignal(signal.SIGTERM) == before  # the guard gives the handlers back


def test_quiet_ignores_signals_during_a_cleanup_that_no_signal_began() -> None:
    with _sigterm_stops() as quiet:
        quiet()  # `testbed run` failed or ended by itself and is stopping its processes
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    with pytest.raises(_Stop), _sigterm_stops():
        signal.raise_signal(signal.SIGINT)  # a fresh guard stops at the first signal
