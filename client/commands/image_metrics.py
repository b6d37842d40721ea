"""What `qlink image metrics` measures and how it prints it: NPCR and UACI for key and plaintext
sensitivity (Wu et al.), entropy, histogram chi-square and adjacent-pixel correlations of the plain and
cipher images, per channel, each judged at alpha = 0.05 (`qcore.image.metrics` computes them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SMALL_PIXELS = 256 * 256
"""Below this the tests' normal and chi-square approximations are rough (Wu et al. tabulate from 256x256)."""
_DIRECTIONS = ("horizontal", "vertical", "diagonal")


def assess(image: np.ndarray, key: bytes, nonce: bytes) -> dict[str, Any]:
    """Encrypt `image` three times (key, key with bit 0 flipped, one pixel changed; one nonce) and judge
    every channel at alpha = 0.05. JSON-ready: NaN (an undefined correlation) becomes None."""
    import numpy as np

    from qlinkmed.qcore.image import encrypt, metrics

    rows, cols = image.shape[:2]

    def cipher_of(plain: np.ndarray, k: bytes) -> np.ndarray:
        return encrypt(plain, k, nonce).data[:rows, :cols]  # the image's own positions, padding cut

    def byte_view(a: np.ndarray) -> np.ndarray:
        return a if a.dtype == np.uint8 else (a >> 8).astype(np.uint8)

    planes = [
        byte_view(a)
        for a in (
            image,
            cipher_of(image, key),
            cipher_of(image, metrics.flip_key_bit(key)),
            cipher_of(metrics.change_one_pixel(image), key),
        )
    ]
    names = ("gray",) if image.ndim == 2 else ("R", "G", "B")
    pixels = rows * cols
    lo, hi = metrics.uaci_interval(pixels)
    entropy_min = metrics.entropy_critical(pixels)
    correlation_max_abs = {
        d: metrics.correlation_critical(n) if n >= 2 else None
        for d, n in zip(
            _DIRECTIONS, (rows * (cols - 1), (rows - 1) * cols, (rows - 1) * (cols - 1)), strict=True
        )
    }
    critical = {
        "npcr_min": metrics.npcr_critical(pixels),
        "uaci_range": [lo, hi],
        "chi_square_max": metrics.CHI2_CRITICAL_255,
        "entropy_min": entropy_min,
        "correlation_max_abs": correlation_max_abs,
    }
    channels = {}
    for index, name in enumerate(names):
        plain, cipher, flipped, changed = (p if p.ndim == 2 else p[:, :, index] for p in planes)
        corr = metrics.correlations(cipher)
        entropy, chi2 = metrics.entropy(cipher), metrics.chi_square(cipher)
        channels[name] = {
            "key_sensitivity": _sensitivity(metrics.sensitivity(cipher, flipped)),
            "plaintext_sensitivity": _sensitivity(metrics.sensitivity(cipher, changed)),
            "plain": {
                "entropy": metrics.entropy(plain),
                "chi_square": metrics.chi_square(plain),
                "correlation": {d: _finite(v) for d, v in metrics.correlations(plain).items()},
            },
            "cipher": {
                "entropy": entropy,
                "entropy_pass": entropy > entropy_min,
                "chi_square": chi2,
                "chi_square_pass": chi2 < metrics.CHI2_CRITICAL_255,
                "correlation": {d: _finite(v) for d, v in corr.items()},
                "correlation_pass": {
                    # No bound (fewer than two pairs) comes with a NaN correlation: no verdict either way.
                    d: None if math.isnan(v) or (bound := correlation_max_abs[d]) is None else abs(v) < bound
                    for d, v in corr.items()
                },
            },
        }
    verdicts = [v for c in channels.values() for v in _verdicts(c) if v is not None]
    return {
        "alpha": metrics.ALPHA,
        "pixels": pixels,
        "critical": critical,
        "channels": channels,
        "tests": len(verdicts),
        "failed": verdicts.count(False),
    }


def _sensitivity(s: Any) -> dict[str, Any]:
    return {"npcr": s.npcr, "npcr_pass": s.npcr_pass, "uaci": s.uaci, "uaci_pass": s.uaci_pass}


def _verdicts(channel: dict[str, Any]) -> list[bool | None]:
    sens = [
        channel[k][f"{m}_pass"]
        for k in ("key_sensitivity", "plaintext_sensitivity")
        for m in ("npcr", "uaci")
    ]
    cipher = channel["cipher"]
    return [*sens, cipher["entropy_pass"], cipher["chi_square_pass"], *cipher["correlation_pass"].values()]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def format_metrics(r: dict[str, Any]) -> str:
    """The human view of a metrics report: a header, then one table per channel, then a tally."""
    c, shape = r["critical"], r["shape"]
    lo, hi = c["uaci_range"]
    bound = {
        "npcr": f"> {c['npcr_min']:.4f} %",
        "uaci": f"in [{lo:.4f}, {hi:.4f}] %",
        "entropy": f"> {c['entropy_min']:.5f}",
        "chi_square": f"< {c['chi_square_max']}",
    }
    key = "from the key file (hidden)" if r["key"] == "file" else r["key"]
    lines = [
        f"{r['input']}: {r['format']}, {shape[1]}x{shape[0]} {'RGB' if len(shape) == 3 else 'gray'} "
        f"{r['dtype']}, statistics on the {r['analysed']}; key {key}, nonce {r['nonce']}"
        + (f" (seed {r['seed']})" if r["seed"] is not None else ""),
        f"alpha = {r['alpha']} at {r['pixels']:,} pixels: NPCR {bound['npcr']}, UACI {bound['uaci']} (Wu et "
        f"al.); chi-square {bound['chi_square']} (255 dof); entropy {bound['entropy']} (G-test); "
        "|r| of adjacent pixels below the two-sided zero-correlation bound",
    ]
    if r["pixels"] < SMALL_PIXELS:
        lines.append("note: below 256x256 pixels the tests' approximations are rough")
    for name, ch in r["channels"].items():
        plain, cipher = ch["plain"], ch["cipher"]
        rows = [
            (f"{m.upper()}, {label}", "", f"{ch[k][m]:.4f} %", bound[m], ch[k][f"{m}_pass"])
            for label, k in (
                ("key bit flipped", "key_sensitivity"),
                ("pixel changed", "plaintext_sensitivity"),
            )
            for m in ("npcr", "uaci")
        ]
        for m, label, spec in (
            ("entropy", "entropy (bits)", ".5f"),
            ("chi_square", "histogram chi-square", ".2f"),
        ):
            rows.append(
                (label, format(plain[m], spec), format(cipher[m], spec), bound[m], cipher[f"{m}_pass"])
            )
        rows += [
            (
                f"correlation {d}",
                _signed(plain["correlation"][d]),
                _signed(cipher["correlation"][d]),
                _bound(c["correlation_max_abs"][d]),
                cipher["correlation_pass"][d],
            )
            for d in _DIRECTIONS
        ]
        lines += ["", f"{name:<28}{'plain':>12}{'cipher':>12}  {'critical':<24}verdict"]
        lines += [f"  {a:<26}{b:>12}{x:>12}  {d:<24}{_verdict(ok)}" for a, b, x, d, ok in rows]
    failed, tests = r["failed"], r["tests"]
    tally = f"all {tests} tests passed" if not failed else f"{failed} of {tests} tests FAILED"
    lines += ["", f"{tally} (at alpha = {r['alpha']} an ideal cipher fails each test 5 % of the time)"]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def _bound(value: float | None) -> str:
    return "n/a" if value is None else f"|r| < {value:.5f}"


def _signed(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.5f}"


# Files --------------------------------------------------------------------------------------------------
