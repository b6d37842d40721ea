"""Request-intention gate benchmark: the per-request cost of scoring one user-day with a loaded QFNN model
on the numpy statevector path (goal: well under 1 ms), for 2 and 4 qubits, and the classical baselines on
the same single rows for comparison. Trains on a small synthetic data set first.

    .venv/bin/python bench/bench_gate.py [--rows 3000] [--users 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from qlinkmed.qcore.intent import baselines, qfnn
from qlinkmed.qcore.intent.cert_synth import SynthConfig, generate
from qlinkmed.qcore.intent.features import REQUEST, from_logs


def per_row_us(score: Callable[[np.ndarray], object], x: np.ndarray) -> tuple[float, float]:
    times = np.empty(len(x))
    for i in range(len(x)):
        started = time.perf_counter()
        score(x[i])
        times[i] = time.perf_counter() - started
    return float(np.percentile(times, 50) * 1e6), float(np.percentile(times, 99) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    with threadpool_limits(limits=1):
        feats = from_logs(generate(SynthConfig(users=args.users, days=90), np.random.default_rng(1)))
        g = feats.subset(REQUEST)
        rows = g.x[: args.rows]
        print(
            f"per-request scoring of one user-day ({len(REQUEST.names)} request features), {len(rows)} rows"
        )
        for q in (2, 4):
            model, _ = qfnn.train(g.x, g.label, REQUEST, qfnn.TrainConfig(qubits=q), np.random.default_rng(2))
            loaded = qfnn.QfnnModel.from_bytes(model.to_bytes())
            p50, p99 = per_row_us(loaded.score, rows)
            print(f"  qfnn-{q}q (numpy statevector)  p50 {p50:7.1f} us  p99 {p99:7.1f} us")
        for name in baselines.BASELINES:
            base = baselines.train(name, g.x, g.label, np.random.default_rng(3))
            p50, p99 = per_row_us(base.score, rows)
            print(f"  {name:28s} p50 {p50:7.1f} us  p99 {p99:7.1f} us")


if __name__ == "__main__":
    main()
