"""Link benchmark: the running daemons end to end, as an operator would see them.

    .venv/bin/python bench/bench_link.py                           # BB84, 5 runs of 20 s
    .venv/bin/python bench/bench_link.py --protocol e91 --runs 3   # E91 (needs large rounds)
    .venv/bin/python bench/bench_link.py --runs 1 --seconds 5 --json
    .venv/bin/python bench/bench_link.py --protocol bb84-decoy --distance-km 50 --runs 1 --seconds 120
    .venv/bin/python bench/bench_link.py --runs 1 --seconds 15 --wan none --wan 5ms --wan 25ms
    .venv/bin/python bench/bench_link.py --runs 3 --baseline --wan none --wan 5ms --wan 25ms   # issue 16

Each run writes a fresh loopback deployment (10 km fibre unless --distance-km says otherwise), spawns the
channel service and both daemons together and measures: startup (spawn -> all three sent READY=1), first
key (spawn -> facility A's /v1/status shows pool_bits > 0, polled every 10 ms), then, over a window of
--seconds that starts --warmup seconds after the first key, every round facility A (Alice) wrote to its
audit log: round durations, final key bits, QBER, and the secret key rate the pair sustains (final key
bits of the rounds established in the window / the window's wall time). Every figure printed is the
median over runs.

The deployment's high watermark is set out of reach, so the pool never fills and pauses generation
inside the window. With --wan SPEC (repeatable: one table row per setting), the classical link and both
data links run through the WAN emulator proxy (qlinkd/testbed/wan.py) with that one-way delay per
direction, so ``--wan 5ms`` is a 10 ms round trip and ``--wan 25ms`` 50 ms; ``none`` dials directly and
``0ms`` goes through the proxy with no delay (the proxies run in the benchmark's process). Timings vary
on a shared machine: the channel emulation and both daemons compete for the same cores, which is the
point (this is the whole link on one host).

Rounds run with the configuration's defaults (2e7 pulses, 16 rounds in flight) unless --pulses and
--rounds-in-flight say otherwise. --baseline adds a first row measured in the same invocation with the
link as it was before rounds were pipelined: 700,000 pulses a round, one round at a time, Cascade's
low-latency schedule, direct; every
row then also shows its key rate as a multiple of that baseline and as a share of the same run's
direct ("none") row.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, SupportsFloat

import _deploy as d

from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.testbed.wan import WanSpec

FIRST_KEY_TIMEOUT_S = 60.0
NO_WAN = "none"
BASELINE = "baseline"
"""The row measured with the pre-pipelining link's settings (BASELINE_PULSES, one round at a time)."""
BASELINE_PULSES = 700_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One run's figures; times in seconds, rates per second of wall time in the window."""

    ready_s: float
    """Spawn -> all three processes sent READY=1."""
    first_key_s: float | None
    """Spawn -> facility A holds key (None: none within the first-key timeout)."""
    window_s: float
    """Wall time of the measurement window."""
    rounds_established: int
    """Rounds established in the window."""
    rounds_aborted: int
    """Rounds aborted in the window."""
    round_s_median: float
    """Median duration of the window's rounds (established and aborted)."""
    round_s_p90: float
    """90th percentile of the window's round durations."""
    bits_per_round: float
    """Median final key bits of the established rounds."""
    qber: float
    """Median QBER of the rounds that measured one."""
    round_trips: float
    """Median classical round trips per established round (what a WAN delay multiplies)."""
    key_rate_bps: float
    """Final key bits of the window's established rounds / window wall time."""
    rounds_per_s: float
    """Rounds ended (established or aborted) per second of wall time."""
    abort_reasons: dict[str, int] = field(default_factory=dict)
    """Aborted rounds by reason."""
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    """Peak resident set of each process (channel and both facilities) at the end of the window."""
    wan_classical_bytes: int | None = None
    """Bytes the classical link's proxy delivered in both directions over the whole run (None: no proxy)."""


def one_run(
    protocol: str,
    pulses: int | None,
    seconds: float,
    distance_km: float,
    first_key_timeout: float = FIRST_KEY_TIMEOUT_S,
    afterpulse: float = 0.04,
    wan: str | None = None,
    rounds_in_flight: int | None = None,
    warmup_s: float = 0.0,
    cascade: str | None = None,
) -> RunResult:
    with d.running(
        wan=wan,
        protocol=protocol,
        pulses_per_round=pulses,
        rounds_in_flight=rounds_in_flight,
        cascade=cascade,
        distance_km=distance_km,
        afterpulse=afterpulse,
        # A decoy round's default timeout grows with its size (ops/config.default_round_timeout_s).
        round_timeout_s=None if protocol == "bb84-decoy" else 60.0,
    ) as started:
        deployment = started.deployment

        def has_key() -> bool:
            status = d.link_status(deployment, d.A)
            return status is not None and status["pool_bits"] > 0

        try:
            d.wait_for(has_key, first_key_timeout, "first key")
            first_key_s: float | None = time.monotonic() - started.spawned_at
        except TimeoutError:
            first_key_s = None
        # The window of rounds opens up as rounds commit: the sustained rate is measured after it has.
        time.sleep(warmup_s)
        seen = len(d.read_audit(deployment, d.A))
        window_start = time.monotonic()
        time.sleep(seconds)  # the measurement window itself, not a wait for readiness
        records = d.read_audit(deployment, d.A)[seen:]
        window = time.monotonic() - window_start
        rss = d.peak_rss_mib(started.group)
        carried = None
        if started.wan is not None:
            stats = started.wan.statistics()["classical"]
            carried = stats.upstream_delivered + stats.downstream_delivered
    rounds = [r for r in records if r.get("event") in ("round_established", "round_aborted")]
    established = [r for r in rounds if r["event"] == "round_established"]
    durations = [float(r["duration_s"]) for r in rounds]
    qbers = [float(r["qber"]) for r in rounds if r.get("qber") is not None]
    reasons = collections.Counter(r["reason"] for r in rounds if r["event"] == "round_aborted")
    return RunResult(
        ready_s=started.ready_s,
        first_key_s=first_key_s,
        window_s=window,
        rounds_established=len(established),
        rounds_aborted=len(rounds) - len(established),
        round_s_median=d.median(durations),
        round_s_p90=d.percentile(durations, 0.9),
        bits_per_round=d.median([float(r["final_key_bits"]) for r in established]),
        qber=d.median(qbers),
        round_trips=d.median([float(r["round_trips"]) for r in established if "round_trips" in r]),
        key_rate_bps=sum(int(r["final_key_bits"]) for r in established) / window,
        rounds_per_s=len(rounds) / window,
        abort_reasons=dict(reasons),
        peak_rss_mib=rss,
        wan_classical_bytes=carried,
    )


_COLUMNS = (
    ("ready_s", "ready s", "{:.2f}"),
    ("first_key_s", "1st key s", "{:.2f}"),
    ("round_s_median", "round s", "{:.3f}"),
    ("round_s_p90", "p90 s", "{:.3f}"),
    ("bits_per_round", "bits/round", "{:,.0f}"),
    ("qber", "QBER", "{:.4f}"),
    ("round_trips", "RTTs/round", "{:.0f}"),
    ("key_rate_bps", "key bit/s", "{:,.0f}"),
    ("rounds_per_s", "rounds/s", "{:.2f}"),
    ("rounds_established", "estab", "{:d}"),
    ("rounds_aborted", "abort", "{:d}"),
)


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "{:d}" and isinstance(value, SupportsFloat):
        # A {:d} cell holds a count (a Python or numpy number); the parameter is object for the None cells.
        return fmt.format(round(float(value)))
    return fmt.format(value)


def medians(runs: list[RunResult]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, _, _ in _COLUMNS:
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        out[name] = d.median([float(v) for v in values]) if values else None
    return out


def print_table(
    protocol: str,
    pulses: int | None,
    seconds: float,
    runs: list[RunResult],
    first_key_timeout: float,
    wan: str | None = None,
) -> None:
    size = "the configuration's default" if pulses is None else f"{pulses:,}"
    where = "" if wan is None else f", WAN {_wan_words(wan)}"
    print(
        f"link benchmark: {protocol}, {size} pulses per round, {seconds:g} s window, {len(runs)} runs{where}"
    )
    widths = [max(len(title), 10) for _, title, _ in _COLUMNS]
    print("run    " + "  ".join(f"{t:>{w}}" for (_, t, _), w in zip(_COLUMNS, widths, strict=True)))
    for i, run in enumerate(runs, start=1):
        cells = [_cell(getattr(run, n), f) for n, _, f in _COLUMNS]
        print(f"{i:<5}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    mid = medians(runs)
    cells = [_cell(mid[n], f) for n, _, f in _COLUMNS]
    print("median " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    reasons: collections.Counter[str] = collections.Counter()
    for run in runs:
        reasons.update(run.abort_reasons)
    if reasons:
        print("aborts by reason (all runs): " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    missing = sum(r.first_key_s is None for r in runs)
    if missing:
        print(f"{missing}/{len(runs)} runs established no key within {first_key_timeout:g} s")
    for i, run in enumerate(runs, start=1):
        peaks = ", ".join(f"{name} {mib:,.0f} MiB" for name, mib in run.peak_rss_mib.items())
        print(f"run {i} peak RSS: {peaks}")
        if run.wan_classical_bytes is not None:
            print(f"run {i} classical link through the proxy: {run.wan_classical_bytes / 1e6:,.1f} MB")


def _wan_words(wan: str) -> str:
    if wan == NO_WAN:
        return "none (direct)"
    spec = WanSpec.parse(wan)
    return f"{wan} ({spec.delay_s * 2e3:g} ms RTT)"


def ratios(settings: dict[str, list[RunResult]]) -> dict[str, dict[str, float | None]]:
    """Each setting's median key rate as a multiple of the baseline row's and as a share of the direct
    row's (None where that row was not measured)."""
    rate = {name: medians(results)["key_rate_bps"] for name, results in settings.items()}
    base, direct = rate.get(BASELINE), rate.get(NO_WAN)
    return {
        name: {
            "x_baseline": value / base if value is not None and base else None,
            "of_direct": value / direct if value is not None and direct else None,
        }
        for name, value in rate.items()
    }


def print_settings(
    protocol: str,
    pulses: int | None,
    seconds: float,
    settings: dict[str, list[RunResult]],
    rounds_in_flight: int | None = None,
) -> None:
    """One row per setting (the baseline, then each --wan): the medians of its runs."""
    size = "the configuration's default" if pulses is None else f"{pulses:,}"
    window = "the configuration's default" if rounds_in_flight is None else str(rounds_in_flight)
    runs = len(next(iter(settings.values())))
    print(
        f"link benchmark over the WAN emulator: {protocol}, {size} pulses per round, {window} rounds in "
        f"flight, {seconds:g} s window, median of {runs} run(s) per setting"
    )
    widths = [max(len(title), 10) for _, title, _ in _COLUMNS]
    head = "  ".join(f"{t:>{w}}" for (_, t, _), w in zip(_COLUMNS, widths, strict=True))
    print(f"{'wan':<24}  {head}  {'x baseline':>10}  {'of direct':>9}")
    shares = ratios(settings)
    for wan, results in settings.items():
        mid = medians(results)
        cells = [_cell(mid[n], f) for n, _, f in _COLUMNS]
        row = "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        times, share = shares[wan]["x_baseline"], shares[wan]["of_direct"]
        times_text = "-" if times is None else f"{times:.2f}x"
        share_text = "-" if share is None else f"{share:.0%}"
        extra = f"{times_text:>10}  {share_text:>9}"
        print(f"{_setting_words(wan):<24}  {row}  {extra}")


def _setting_words(setting: str) -> str:
    if setting == BASELINE:
        return f"baseline ({BASELINE_PULSES:,}, 1 rd)"
    return _wan_words(setting)


def _wan_setting(text: str) -> str:
    if text.strip().lower() == NO_WAN:
        return NO_WAN
    try:
        WanSpec.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{exc.field}: {exc.message}") from None
    return text.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="fresh deployments to measure (median)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per run")
    parser.add_argument(
        "--pulses",
        type=lambda text: int(float(text)),
        default=None,
        help="pulses (E91: pairs) per round (default: the configuration's, 2e7; bb84-decoy: its choice "
        "for the fibre)",
    )
    parser.add_argument(
        "--rounds-in-flight",
        type=int,
        default=None,
        help="rounds a link keeps open at once (default: the configuration's, 16)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=40.0,
        help="seconds after the first key before the measurement window opens (default 40: the link's "
        "window of rounds grows as rounds commit and is full after ~30 s at 50 ms RTT)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="first measure, in the same invocation, the pre-pipelining link: 700,000 pulses a round, "
        "one round at a time, direct",
    )
    parser.add_argument("--protocol", choices=("bb84", "bb84-decoy", "e91"), default="bb84")
    parser.add_argument("--distance-km", type=float, default=10.0, help="fibre length")
    parser.add_argument(
        "--afterpulse",
        type=float,
        default=0.04,
        help="detector after-pulse probability (E91 keys need ~0.005)",
    )
    parser.add_argument(
        "--first-key-timeout", type=float, default=FIRST_KEY_TIMEOUT_S, help="give up waiting for key after"
    )
    parser.add_argument(
        "--wan",
        type=_wan_setting,
        action="append",
        metavar="SPEC",
        help="run the links through the WAN emulator: DELAY[,JITTER,LOSS,RATE] one way per direction "
        "(5ms = 10 ms RTT), 'none' to dial directly; repeat for one row per setting",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.rounds_in_flight is not None and not 1 <= args.rounds_in_flight <= 32:
        parser.error(f"--rounds-in-flight must be in 1..32, got {args.rounds_in_flight}")
    if args.baseline and args.protocol != "bb84":
        parser.error("--baseline is the single-photon BB84 link's (--protocol bb84)")
    tabled = args.wan is not None or args.baseline
    settings: dict[str, list[RunResult]] = {}
    for setting in ([BASELINE] if args.baseline else []) + (args.wan or [NO_WAN]):
        runs = settings.setdefault(setting, [])
        baseline = setting == BASELINE
        for i in range(args.runs):
            runs.append(
                one_run(
                    args.protocol,
                    BASELINE_PULSES if baseline else args.pulses,
                    args.seconds,
                    args.distance_km,
                    args.first_key_timeout,
                    afterpulse=args.afterpulse,
                    wan=None if setting in (NO_WAN, BASELINE) else setting,
                    rounds_in_flight=1 if baseline else args.rounds_in_flight,
                    cascade="low-latency" if baseline else None,
                    warmup_s=args.warmup,
                )
            )
            if not args.json:
                print(f"{setting if tabled else ''}: run {i + 1}/{args.runs} done", file=sys.stderr)
    if args.json:
        body: dict[str, Any] = {
            "protocol": args.protocol,
            "pulses_per_round": args.pulses,
            "window_s": args.seconds,
            "distance_km": args.distance_km,
            "afterpulse": args.afterpulse,
            "first_key_timeout_s": args.first_key_timeout,
            "rounds_in_flight": args.rounds_in_flight,
        }
        if not tabled:
            body |= {"median": medians(settings[NO_WAN]), "runs": [asdict(r) for r in settings[NO_WAN]]}
        else:
            shares = ratios(settings)
            body["settings"] = [
                {"wan": wan, "median": medians(runs), **shares[wan], "runs": [asdict(r) for r in runs]}
                for wan, runs in settings.items()
            ]
        print(json.dumps(body, indent=2))
        return 0
    for wan, runs in settings.items():
        print_table(
            args.protocol,
            BASELINE_PULSES if wan == BASELINE else args.pulses,
            args.seconds,
            runs,
            args.first_key_timeout,
            wan=None if not tabled or wan in (BASELINE, NO_WAN) else wan,
        )
    if tabled:
        print_settings(args.protocol, args.pulses, args.seconds, settings, args.rounds_in_flight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
