"""`qlink sim bb84|e91|sweep`: the simulator for QKD researchers."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_ABORTED = 0, 2, 3


def _positive_int(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _bounded(low: float, high: float, *, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low:g}, {high:g}], got {text}")
        return value

    return parse


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _channel_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--distance-km", type=_bounded(0.0, 1000.0), default=10.0, help="fibre length (default 10)"
    )
    p.add_argument(
        "--attenuation", type=_bounded(0.0, 10.0), default=0.2, help="fibre loss dB/km (default 0.2)"
    )
    p.add_argument(
        "--misalignment",
        type=_bounded(0.0, 0.5),
        default=5e-3,
        help="optical error probability (default 0.005)",
    )
    p.add_argument("--dark-count", type=_bounded(0.0, 0.5), default=6e-7, help="per gate and detector (6e-7)")
    p.add_argument(
        "--afterpulse", type=_bounded(0.0, 0.5), default=4e-2, help="after-pulse probability (0.04)"
    )
    p.add_argument(
        "--detector-efficiency", type=_bounded(0.0, 1.0, low_open=True), default=0.10, help="default 0.10"
    )


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True, parser_class=type(parser))
    for name in ("bb84", "e91"):
        p = sub.add_parser(name, help=f"one {name.upper()} round through the emulated channel")
        p.add_argument(
            "--qubits", type=_positive_int, default=1_000_000, help="pulses or pairs (default 1e6)"
        )
        _channel_flags(p)
        if name == "bb84":
            p.add_argument("--source", choices=("single-photon", "wcp"), default="single-photon")
            p.add_argument(
                "--mu",
                type=_bounded(0.0, 10.0, low_open=True),
                default=None,
                help="signal intensity (wcp; default: optimised for the distance, pulses and eps)",
            )
            p.add_argument(
                "--decoy-mu2",
                type=_bounded(0.0, 10.0, low_open=True),
                default=None,
                help="weak decoy intensity (wcp; default: optimised)",
            )
            p.add_argument(
                "--decoy-probabilities",
                type=_bounded(0.0, 1.0, low_open=True),
                nargs=3,
                metavar=("P1", "P2", "P3"),
                default=None,
                help="signal, weak decoy, vacuum class probabilities summing to 1 (wcp; default: optimised)",
            )
            p.add_argument(
                "--p-x",
                type=_bounded(0.0, 1.0, low_open=True),
                default=None,
                help="probability of the key basis X for Alice and Bob (wcp; default: optimised)",
            )
            p.add_argument("--eve", choices=("none", "intercept-resend", "pns"), default="none")
        else:
            p.add_argument("--eve", choices=("none", "intercept-resend"), default="none")
            p.add_argument(
                "--e91-security",
                choices=("bbm92", "device-independent"),
                default="bbm92",
                help="key length: bbm92 finite key (default) or the device-independent rate (fair sampling)",
            )
        p.add_argument(
            "--per-pulse",
            action="store_true",
            help="draw every pulse or pair (the reference path; at most 2e8) instead of the detected"
            " pulses (bb84) or the coincidences (e91) only",
        )
        p.add_argument(
            "--eve-fraction", type=_bounded(0.0, 1.0), default=1.0, help="share of pulses attacked"
        )
        p.add_argument("--sample-fraction", type=_bounded(0.0, 1.0, low_open=True), default=0.3)
        p.add_argument(
            "--eps-sec", type=_eps, default=1e-10, help="secrecy parameter in (0, 1) (default 1e-10)"
        )
        p.add_argument(
            "--eps-cor",
            type=_eps,
            default=1e-10,
            help="correctness parameter in (0, 1); the verification hash has ceil(log2(1/eps_cor)) bits "
            "(default 1e-10: 34 bits)",
        )
        p.add_argument("--backend", choices=("numpy", "qiskit"), default="numpy")
        p.add_argument("--seed", type=int, default=None, help="seed of every random choice")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(run=run_round)
    sweep = sub.add_parser(
        "sweep",
        help="key rate against distance (simulated points over the finite-key curves) and QBER/CHSH "
        "against Eve, as PNG and CSV",
    )
    from .sim_sweep import add_sweep_flags, run_sweep

    add_sweep_flags(sweep, count=_positive_int, number=_bounded)
    sweep.set_defaults(run=run_sweep)


def _sim_config(args: argparse.Namespace):
    from qlinkmed.qcore.channel import Eavesdropper, EveKind
    from qlinkmed.qcore.channel_model import ChannelModel
    from qlinkmed.qcore.params import DecoySource, E91Security, ProtocolKind, SourceKind
    from qlinkmed.qcore.sim import SimConfig

    channel = ChannelModel(
        distance_km=args.distance_km,
        attenuation_db_per_km=args.attenuation,
        detector_efficiency=args.detector_efficiency,
        dark_count=args.dark_count,
        afterpulse=args.afterpulse,
        misalignment=args.misalignment,
    )
    source = SourceKind(getattr(args, "source", "single-photon"))
    decoy = None
    explicit = {
        "mu": getattr(args, "mu", None),
        "mu2": getattr(args, "decoy_mu2", None),
        "p": getattr(args, "decoy_probabilities", None),
        "p_x": getattr(args, "p_x", None),
    }
    if source is SourceKind.WCP and any(v is not None for v in explicit.values()):
        # Each explicit flag overrides its part of the optimised source.
        from qlinkmed.qcore.decoy_optimiser import optimise

        base = optimise(channel, args.qubits, args.eps_sec, args.eps_cor)
        mus = (
            explicit["mu"] if explicit["mu"] is not None else base.intensities[0],
            explicit["mu2"] if explicit["mu2"] is not None else base.intensities[1],
            base.intensities[2],
        )
        p = explicit["p"]
        probs = (p[0], p[1], p[2]) if p is not None else base.probabilities
        p_x = explicit["p_x"] if explicit["p_x"] is not None else base.p_x
        decoy = DecoySource(intensities=mus, probabilities=probs, p_x=p_x)
    return SimConfig(
        protocol=ProtocolKind(args.protocol),
        qubits=args.qubits,
        channel=channel,
        source=source,
        decoy=decoy,
        eve=Eavesdropper(kind=EveKind(args.eve), fraction=args.eve_fraction),
        backend=args.backend,
        seed=args.seed,
        sample_fraction=args.sample_fraction,
        per_pulse=getattr(args, "per_pulse", False),
        e91_security=E91Security(getattr(args, "e91_security", "bbm92")),
        eps_sec=args.eps_sec,
        eps_cor=args.eps_cor,
    )


def run_round(args: argparse.Namespace) -> int:
    from qlinkmed.qcore.errors import ConfigError
    from qlinkmed.qcore.sim import run_simulation

    try:
        config = _sim_config(args)
        started = time.perf_counter()
        result = run_simulation(config)
        elapsed = time.perf_counter() - started
    except ConfigError as exc:
        print(
            f"qlink sim {args.protocol}: error: --{exc.field.replace('_', '-')}: {exc.message}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    report = result.report()
    report["elapsed_s"] = elapsed
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return EXIT_ABORTED if report["aborted"] else EXIT_OK


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def format_report(r: dict[str, Any]) -> str:
    t = r["theory"]
    honest = " without an eavesdropper" if r["eve"] != "none" else ""
    rows = [
        (
            "protocol",
            f"{r['protocol'].upper()} ({r['source']}), {r['backend']} backend, seed {_fmt(r['seed'])}",
        ),
        (
            "channel",
            f"{r['distance_km']:g} km, eavesdropper: {r['eve']}"
            + (f" on {r['eve_fraction']:.0%}" if r["eve"] != "none" else ""),
        ),
        ("sent / detected", f"{r['qubits_sent']:,} / {r['detected']:,}"),
        ("sifted / disclosed", f"{r['sifted_bits']:,} / {r['sample_bits']:,}"),
        (
            "QBER",
            f"{_fmt(r['qber'], '.4%')} (upper bound {_fmt(r['qber_upper'], '.4%')}; "
            f"model predicts {_fmt(t.get('expected_qber'), '.4%')}{honest})",
        ),
    ]
    if r.get("decoy_intensities"):
        mus = ", ".join(f"{v:.4g}" for v in r["decoy_intensities"])
        ps = ", ".join(f"{v:.3f}" for v in r["decoy_probabilities"])
        how = "optimised for this channel and block" if r["decoy_optimised"] else "as given"
        rows.append(
            ("decoy source", f"mu {mus}; probabilities {ps}; key basis p_X {r['decoy_p_x']:.3f} ({how})")
        )
    rows.append(
        (
            "security",
            f"eps_sec {r['eps_sec']:.3g}, eps_cor {r['eps_cor']:.3g}: {r['eps']:.4g}-secure in total "
            f"(verification hash {r['verification_bits']} bits)",
        )
    )
    if r["chsh_s"] is not None:
        rows.append(
            (
                "CHSH S",
                f"{r['chsh_s']:.4f} (interval {r['chsh_lower']:.4f} .. {r['chsh_upper']:.4f}; "
                f"model {_fmt(t.get('expected_chsh'), '.4f')}{honest}; classical limit 2)",
            )
        )
    if r.get("e91_security"):
        rows.append(("key analysis", r["e91_security"]))
    if r.get("security_assumption"):
        rows.append(("assumption", r["security_assumption"]))
    if r["raw_key_bits"]:
        rows.append(
            (
                "reconciliation",
                f"{r['leaked_ec_bits']:,} bits leaked, efficiency "
                f"{_fmt(r['ec_efficiency'], '.3f')}, {r['round_trips']} round trips",
            )
        )
    if not r["aborted"]:
        rows.append(
            (
                "final key",
                f"{r['final_key_bits']:,} bits (PA output {r['pa_output_bits']:,}, "
                f"{r['auth_cost_bits']} refilled the authentication key)",
            )
        )
        if "finite_key_bits" in t:
            rows.append(("finite-key theory", f"{t['finite_key_bits']:,} bits expected for these parameters"))
        rows.append(("key hashes", f"Alice {r['alice_key_sha256'][:16]}  Bob {r['bob_key_sha256'][:16]}"))
    rows.append(("elapsed", f"{r['elapsed_s']:.3f} s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if r["aborted"]:
        lines.append(f"VERDICT: ABORTED ({r['abort_reason']}): {r['abort_detail']}. No key was produced.")
    else:
        verdict = "identical" if r["keys_equal"] else "DIFFERENT"
        lines.append(
            f"VERDICT: KEY ESTABLISHED: {r['final_key_bits']:,} secret bits, keys {verdict} at both ends."
        )
    return "\n".join(lines)
