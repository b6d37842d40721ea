"""Draw and write the sweeps of `qlink sim sweep` (CSV for analysis, PNG for people), and read the
points measured over the daemons (`bench/daemon_points.py` writes them)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qlinkmed.qcore.sweep import DistancePoint, TheoryCurves

EVE_FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
DAEMON_POINTS_FORMAT = "qlink-daemon-points/1"
"""The `format` value of a daemon-points file; a later layout gets a new number."""

PROTOCOL_COLOURS = {"single-photon": "tab:blue", "decoy": "tab:orange", "e91": "tab:green"}
DAEMON_COLOURS = {"bb84": "tab:blue", "bb84-decoy": "tab:orange", "e91": "tab:green"}
"""The daemons' protocol names against the sweep's: the daemons' BB84 source is single-photon."""
LINE_STYLES = (":", "--", "-", "-.")
MARKERS = ("o", "s", "^", "D")


class SweepInputError(Exception):
    """A file the sweep reads is missing or malformed: the message names the file and the problem."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DaemonPoint:
    """Key measured over the running daemons (channel service and both qlinkd) at one distance."""

    protocol: str
    """The deployment's protocol string as given (bb84, e91, bb84-decoy, ...)."""
    distance_km: float
    """Fibre length of the emulated channel."""
    pulses_per_round: int
    """Pulses (pairs) per round."""
    rounds: int
    """Rounds that ended in the measurement window (established or aborted)."""
    key_bits: int
    """Final key bits of the established rounds."""
    key_bits_per_pulse: float
    """key_bits / (rounds * pulses_per_round)."""
    sustained_bits_per_s: float
    """key_bits / the window's wall time."""


_DAEMON_TYPES: dict[str, type | tuple[type, ...]] = {
    "protocol": str,
    "distance_km": (int, float),
    "pulses_per_round": int,
    "rounds": int,
    "key_bits": int,
    "key_bits_per_pulse": (int, float),
    "sustained_bits_per_s": (int, float),
}


def read_daemon_points(path: str | Path) -> list[DaemonPoint]:
    """Parse a daemon-points file: {"format": DAEMON_POINTS_FORMAT, "points": [{...}, ...]}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise SweepInputError(f"--daemon-points {path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SweepInputError(f"--daemon-points {path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != DAEMON_POINTS_FORMAT:
        raise SweepInputError(
            f"--daemon-points {path}: expected an object with format {DAEMON_POINTS_FORMAT!r}"
        )
    raw = doc.get("points")
    if not isinstance(raw, list):
        raise SweepInputError(f"--daemon-points {path}: 'points' must be a list")
    points = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise SweepInputError(f"--daemon-points {path}: points[{i}] is not an object")
        for name, kind in _DAEMON_TYPES.items():
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise SweepInputError(
                    f"--daemon-points {path}: points[{i}].{name} is missing or not a {kind}"
                )
        values: dict[str, Any] = {name: entry[name] for name in _DAEMON_TYPES}
        if values["pulses_per_round"] <= 0 or values["rounds"] < 0 or values["key_bits"] < 0:
            raise SweepInputError(f"--daemon-points {path}: points[{i}] has a negative or zero count")
        points.append(DaemonPoint(**values))
    return points


def daemon_points_document(points: Sequence[DaemonPoint], **about: Any) -> dict[str, Any]:
    """The JSON document `read_daemon_points` reads (`about`: how the points were measured)."""
    return {"format": DAEMON_POINTS_FORMAT, **about, "points": [dataclasses.asdict(p) for p in points]}


def _positive(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values, np.nan)


def draw_distance_plot(
    path: str | Path,
    points: Sequence[DistancePoint],
    curves: TheoryCurves,
    daemon: Sequence[DaemonPoint] = (),
) -> Path:
    """Key bits per pulse (log) against distance: the finite-key curve of each protocol (colour) and
    block size (line style), the asymptotic lines (wide and pale), the simulated points (marker by block
    size; x on the axis: aborted) and the daemon points (filled stars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sizes = sorted({c.pulses for c in curves.finite} | {p.pulses for p in points})
    style = {n: LINE_STYLES[i % len(LINE_STYLES)] for i, n in enumerate(sizes)}
    marker = {n: MARKERS[i % len(MARKERS)] for i, n in enumerate(sizes)}
    fig, ax = plt.subplots(figsize=(9, 6))
    grid = curves.distances_km
    for protocol, values in curves.asymptotic.items():
        ax.semilogy(grid, _positive(values), color=PROTOCOL_COLOURS[protocol], lw=5, alpha=0.18)
    for curve in curves.finite:
        ax.semilogy(
            grid, _positive(curve.key_per_pulse), style[curve.pulses], color=PROTOCOL_COLOURS[curve.protocol]
        )
    for p in points:
        if not p.aborted and p.key_per_pulse > 0:
            ax.semilogy(
                p.distance_km,
                p.key_per_pulse,
                marker[p.pulses],
                color=PROTOCOL_COLOURS[p.protocol],
                mec="black",
                mew=0.5,
                ms=6,
            )
    for d in daemon:
        if d.key_bits_per_pulse > 0:
            ax.semilogy(
                d.distance_km,
                d.key_bits_per_pulse,
                "*",
                color=DAEMON_COLOURS.get(d.protocol, "black"),
                mec="black",
                ms=15,
            )
    positive = [v for c in curves.finite for v in c.key_per_pulse if v > 0]
    positive += [p.key_per_pulse for p in points if p.key_per_pulse > 0]
    top = max(positive, default=1e-1)
    floor = 10.0 ** math.floor(math.log10(max(min(positive, default=1e-8), top * 1e-6)))
    ax.set_ylim(floor, 10.0 ** math.ceil(math.log10(top)))
    ax.set_xlim(grid.min(), grid.max())
    aborted = [p for p in points if p.aborted or p.key_per_pulse <= 0]
    # Side by side, so that protocols aborting at the same distance all show.
    shift = {k: (i - 1) * 0.008 * float(grid.max() - grid.min()) for i, k in enumerate(PROTOCOL_COLOURS)}
    for p in aborted:
        ax.plot(
            p.distance_km + shift[p.protocol],
            floor,
            "x",
            color=PROTOCOL_COLOURS[p.protocol],
            ms=8,
            mew=2,
            clip_on=False,
        )
    names = {"single-photon": "BB84, single photon", "decoy": "BB84, decoy (optimised)", "e91": "E91 (BBM92)"}
    handles = [
        Line2D([], [], color=PROTOCOL_COLOURS[k], lw=2, label=names[k])
        for k in PROTOCOL_COLOURS
        if k in curves.asymptotic or any(c.protocol == k for c in curves.finite)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="grey",
            ls=style[n],
            marker=marker[n],
            label=f"{n:.0e} pulses: finite key, simulated",
        )
        for n in sizes
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="grey",
            lw=5,
            alpha=0.3,
            label="asymptotic (f = 1.1; decoy: GLLP, mu 0.5/0.1, 50/50 bases)",
        )
    )
    handles.append(
        Line2D([], [], color="grey", ls="none", marker="x", mew=2, label="simulated, aborted (no key)")
    )
    if daemon:
        handles.append(
            Line2D(
                [],
                [],
                color="grey",
                ls="none",
                marker="*",
                ms=12,
                mec="black",
                label="measured over the daemons ("
                + ", ".join(
                    f"{k} {n:.0e}" for k, n in dict.fromkeys((p.protocol, p.pulses_per_round) for p in daemon)
                )
                + " a round)",
            )
        )
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_xlabel("fibre length (km)")
    ax.set_ylabel("secret key bits per pulse (pair)")
    ax.set_title("Finite-key secret key rate against distance")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_curves_csv(path: str | Path, curves: TheoryCurves) -> Path:
    """The curves as columns: distance_km, asymptotic_<protocol>, finite_<protocol>_<pulses> (bits per
    pulse; 0 where no key)."""
    out = Path(path)
    columns: dict[str, np.ndarray] = {f"asymptotic_{k}": v for k, v in curves.asymptotic.items()}
    columns |= {f"finite_{c.protocol}_{c.pulses:.0e}": c.key_per_pulse for c in curves.finite}
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["distance_km", *columns])
        for i, d in enumerate(curves.distances_km):
            writer.writerow([f"{d:g}", *(f"{v[i]:.6e}" for v in columns.values())])
    return out


def _write_csv(path: Path, rows: list) -> None:
    fields = [f.name for f in dataclasses.fields(rows[0])]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))


def write_eve_sweep(out_dir: str | Path, *, qubits: int, e91_pairs: int, seed: int) -> list[Path]:
    """QBER and CHSH against the eavesdropper's share: eve_sweep.csv and eve_sweep.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qlinkmed.qcore.constants import TSIRELSON_BOUND
    from qlinkmed.qcore.params import DistillConfig
    from qlinkmed.qcore.sweep import eve_sweep, eve_theory

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    eve_points = eve_sweep(EVE_FRACTIONS, qubits=qubits, e91_pairs=e91_pairs, seed=seed)
    _write_csv(out / "eve_sweep.csv", eve_points)
    written.append(out / "eve_sweep.csv")
    p_grid = np.linspace(0.0, 1.0, 101)
    q_theory, s_theory = eve_theory(p_grid)
    tolerance = DistillConfig().qber_tolerance
    fig, (ax_q, ax_s) = plt.subplots(1, 2, figsize=(11, 4.5))
    bb = [p for p in eve_points if p.protocol == "bb84"]
    ax_q.plot(p_grid, q_theory, label="theory: Q0 + p(1 - 2 Q0)/4")
    ax_q.plot([p.eve_fraction for p in bb], [p.qber for p in bb], "o", label="measured QBER")
    ax_q.plot([p.eve_fraction for p in bb], [p.qber_upper for p in bb], "v", label="finite-size upper bound")
    ax_q.axhline(tolerance, color="red", ls="--", label=f"abort threshold {tolerance:.0%}")
    ax_q.set_xlabel("fraction of pulses intercepted")
    ax_q.set_ylabel("QBER")
    ax_q.set_title("BB84 under intercept-resend")
    ax_q.legend(fontsize=8)
    ax_q.grid(alpha=0.3)
    e91 = [p for p in eve_points if p.protocol == "e91"]
    ax_s.plot(p_grid, s_theory, label="theory: S0 (1 - p/2)")
    ax_s.plot([p.eve_fraction for p in e91], [p.chsh_s for p in e91], "o", label="measured S")
    ax_s.plot(
        [p.eve_fraction for p in e91], [p.chsh_lower for p in e91], "v", label="finite-size lower bound"
    )
    ax_s.axhline(2.0, color="red", ls="--", label="classical limit 2 (abort at or below)")
    ax_s.axhline(TSIRELSON_BOUND, color="grey", ls=":", label="2 sqrt 2")
    ax_s.set_xlabel("fraction of pairs intercepted")
    ax_s.set_ylabel("CHSH S")
    ax_s.set_title("E91 under intercept-resend")
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "eve_sweep.png", dpi=120)
    plt.close(fig)
    written.append(out / "eve_sweep.png")
    return written
