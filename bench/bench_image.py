"""Image cipher benchmark: median encrypt + decrypt time for 512x512 RGB (goal <= 50 ms) and gray, and the
statistics table (Wu et al. NPCR/UACI at alpha = 0.05, entropy, correlation, chi-square) on a smooth
synthetic 512x512 image, grayscale and per RGB channel.

    .venv/bin/python bench/bench_image.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from qlinkmed.qcore.image import decrypt, encrypt, metrics

KEY = bytes(range(32))
NONCE = bytes(range(16))


def smooth_image(seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:512, 0:512].astype(np.float64)
    planes = []
    for c in range(channels):
        wave = 80 * np.sin(x / (60.0 + 7 * c)) * np.cos(y / (45.0 + 5 * c))
        planes.append(128 + wave + 0.06 * (x - 256) + rng.normal(0, 4, (512, 512)))
    img = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


def _enc(image: np.ndarray, key: bytes, nonce: bytes) -> np.ndarray:
    return encrypt(image, key, nonce).data


def time_round_trip(image: np.ndarray, repeat: int) -> tuple[float, float, float]:
    enc, dec = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cipher = encrypt(image, KEY, NONCE)
        t1 = time.perf_counter()
        out = decrypt(cipher, KEY, NONCE)
        t2 = time.perf_counter()
        if not np.array_equal(out, image):
            raise SystemExit("round trip failed")
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    total = [a + b for a, b in zip(enc, dec, strict=True)]
    return statistics.median(enc), statistics.median(dec), statistics.median(total)


def _pf(ok: bool) -> str:
    return "P" if ok else "F"


def take(a: np.ndarray, idx: slice | str) -> np.ndarray:
    return a if isinstance(idx, slice) else a[:, :, "RGB".index(idx)]


def metrics_rows(name: str, plain: np.ndarray) -> list[str]:
    cipher = _enc(plain, KEY, NONCE)
    flipped_key = _enc(plain, metrics.flip_key_bit(KEY), NONCE)
    changed_pixel = _enc(metrics.change_one_pixel(plain), KEY, NONCE)
    channels = [(name, slice(None))] if cipher.ndim == 2 else [(f"{name}[{c}]", c) for c in "RGB"]
    rows = []
    for label, idx in channels:
        c = take(cipher, idx)
        corr = metrics.correlations(c)
        ks = metrics.sensitivity(c, take(flipped_key, idx))
        ps = metrics.sensitivity(c, take(changed_pixel, idx))
        rows.append(
            f"{label:10s} {ks.npcr:8.4f}{_pf(ks.npcr_pass)} {ks.uaci:8.4f}{_pf(ks.uaci_pass)}"
            f" {ps.npcr:8.4f}{_pf(ps.npcr_pass)} {ps.uaci:8.4f}{_pf(ps.uaci_pass)}"
            f" {metrics.entropy(c):7.5f} {metrics.chi_square(c):8.2f}"
            f" {corr['horizontal']:+.5f} {corr['vertical']:+.5f} {corr['diagonal']:+.5f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for name, image, goal in (("RGB", smooth_image(1, 3), " goal <= 50 ms;"), ("gray", smooth_image(1), "")):
        enc, dec, total = time_round_trip(image, args.repeat)
        print(
            f"512x512 {name}: encrypt {enc * 1e3:.1f} ms, decrypt {dec * 1e3:.1f} ms, "
            f"encrypt+decrypt {total * 1e3:.1f} ms (median of {args.repeat};{goal} shared machine)"
        )
    lo, hi = metrics.uaci_interval(512 * 512)
    print(
        f"\nWu et al. alpha=0.05, 512x512: NPCR > {metrics.npcr_critical(512 * 512):.4f} %, "
        f"UACI in [{lo:.4f}, {hi:.4f}] %; chi-square < {metrics.CHI2_CRITICAL_255}"
    )
    print(
        f"{'image':10s} {'keyNPCR':>9s} {'keyUACI':>9s} {'txtNPCR':>9s} {'txtUACI':>9s} {'entropy':>7s}"
        f" {'chi2':>8s} {'corr_h':>8s} {'corr_v':>8s} {'corr_d':>8s}"
    )
    for row in metrics_rows("gray", smooth_image(2)) + metrics_rows("rgb", smooth_image(3, 3)):
        print(row)


if __name__ == "__main__":
    main()
