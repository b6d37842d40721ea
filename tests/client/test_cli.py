"""The `qlink` command line as a user runs it: a real subprocess, its exit code and its output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

QLINK = [sys.executable, "-m", "qlinkmed.client"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QLINK, *args], capture_output=True, text=True, timeout=300, check=False)


def test_help_does_not_load_qiskit_or_numpy() -> None:
    code = (
        "import sys; from qlinkmed.client.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('qiskit', 'qiskit_aer', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_established_key_exits_0_with_the_json_fields() -> None:
    proc = _run("sim", "bb84", "--qubits", "600000", "--distance-km", "5", "--seed", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in (
        "protocol",
        "backend",
        "qubits_sent",
        "detected",
        "sifted_bits",
        "sample_bits",
        "qber",
        "qber_upper",
        "aborted",
        "abort_reason",
        "leaked_ec_bits",
        "ec_efficiency",
        "final_key_bits",
        "alice_key_sha256",
        "bob_key_sha256",
        "elapsed_s",
        "theory",
    ):
        assert key in report, key
    assert report["aborted"] is False
    assert report["final_key_bits"] > 0
    assert report["alice_key_sha256"] == report["bob_key_sha256"]
    assert "finite_key_bits" in report["theory"]


def test_eps_flags_reach_the_report_with_their_total() -> None:
    common = ("sim", "bb84", "--qubits", "600000", "--distance-km", "5", "--seed", "4")
    flags = ("--eps-sec", "1e-9", "--eps-cor", "1e-12")
    report = json.loads(_run(*common, *flags, "--json").stdout)
    assert (report["eps_sec"], report["eps_cor"], report["eps"]) == (1e-9, 1e-12, 1e-9 + 1e-12)
    assert report["verification_bits"] == 40
    default = json.loads(_run(*common, "--json").stdout)
    assert (default["eps_sec"], default["eps_cor"], default["eps"], default["verification_bits"]) == (
        1e-10,
        1e-10,
        2e-10,
        34,
    )
    # The flags reach the length (its exact dependence is tests/qcore/test_security_parameters.py).
    assert report["pa_output_bits"] != default["pa_output_bits"]
    text = _run(*common, *flags).stdout
    assert "eps_sec 1e-09, eps_cor 1e-12: 1.001e-09-secure in total (verification hash 40 bits)" in text


def test_eavesdropper_abort_exits_3_and_says_why() -> None:
    proc = _run("sim", "bb84", "--qubits", "200000", "--eve", "intercept-resend", "--seed", "1")
    assert proc.returncode == 3
    assert "ABORTED (qber_above_threshold)" in proc.stdout
    assert "No key was produced" in proc.stdout


def test_the_event_driven_path_sends_1e10_pulses() -> None:
    # Beyond the per-pulse path's 2e8: only the detections (a few ten thousand at 250 km) are drawn.
    proc = _run(
        "sim", "bb84", "--source", "wcp", "--qubits", "1e10", "--distance-km", "250", "--seed", "3", "--json"
    )
    assert proc.returncode in (0, 3), proc.stderr
    report = json.loads(proc.stdout)
    assert report["qubits_sent"] == 10_000_000_000
    assert 0 < report["detected"] < 1_000_000


def test_e91_reports_chsh() -> None:
    proc = _run("sim", "e91", "--qubits", "300000", "--seed", "2", "--json")
    report = json.loads(proc.stdout)
    assert report["chsh_s"] is not None and report["chsh_lower"] is not None
    assert proc.returncode == (3 if report["aborted"] else 0)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--qubits", "0"], "--qubits"),
        (["--qubits", "many"], "--qubits"),
        (["--qubits", "3e8", "--per-pulse"], "--qubits"),  # the per-pulse path holds 28 bytes a pulse
        (["--misalignment", "0.7"], "--misalignment"),
        (["--detector-efficiency", "0"], "--detector-efficiency"),
        (["--eve", "martian"], "--eve"),
        (["--backend", "gpu"], "--backend"),
        (["--eve-fraction", "1.5"], "--eve-fraction"),
        (["--distance-km", "-3"], "--distance-km"),
        (["--eve", "pns"], "--eve"),  # PNS needs a multi-photon source
        (["--eps-sec", "0"], "--eps-sec"),
        (["--eps-sec", "1"], "--eps-sec"),
        (["--eps-cor", "tiny"], "--eps-cor"),
        (["--eps-cor", "-1e-10"], "--eps-cor"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_argument(args: list[str], named: str) -> None:
    proc = (
        _run("sim", "bb84", "--qubits", "1000", *args)
        if args[0] != "--qubits"
        else _run("sim", "bb84", *args)
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0]
