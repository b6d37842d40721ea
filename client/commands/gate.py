"""`qlink gate evaluate`: the request-intention gate's models, trained and judged on synthetic insider-threat
logs (`qcore.intent`): the QFNN and three classical baselines on two feature sets, held out by user,
over several seeds.

Prints (or with --json, writes to stdout as JSON) one row per model and feature set: AUC, recall at 1 %
and 5 % false-positive rate, precision and accuracy at the threshold that gave 1 % false positives on the
training users, each with a 95 % interval (bootstrap over test users, pooled over seeds), training time
and inference time per row (CPU time of this process, so a busy machine does not inflate them); then
the QFNN read with finite shots on qiskit-aer beside its exact probabilities, the per-request latency of
the model the daemon would load, the class imbalance, and the paper's 89.02 % beside our accuracy.

Writes into --out (created if missing; our files in it are replaced): `roc.png` (ROC curves of the first
seed, one panel per feature set), `qfnn-request.json` (the QFNN trained on the first seed's training
users with the daemon-computable feature set, with its threshold: the model file the daemon loads) and
`results.json` (what --json prints).

Timing happens here, not in qcore (which has no clock). BLAS and OpenMP are held to one thread while this
runs: the QFNN's matrices are 16 x 16 and the data sets small, and on a busy machine multi-threaded BLAS
and the boosted trees' OpenMP spend more time waking threads than working (measured: 16x slower).

Exit codes: 0 done; 2 usage (a value out of range).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from qlinkmed.qcore.intent.evaluate import Summary

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
PAPER_ACCURACY = 0.8902
QUICK = {"users": 120, "days": 60, "seeds": 1, "steps": 40, "shots": 256, "shots_rows": 200, "bootstrap": 30}


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    ev = sub.add_parser(
        "evaluate",
        help="train and judge the QFNN and baselines on synthetic CERT r4.2-shaped logs",
        description="train and judge the QFNN and baselines on synthetic CERT r4.2-shaped logs",
    )
    ev.add_argument("--users", type=int, default=1000, help="users per data set (default 1000)")
    ev.add_argument("--days", type=int, default=120, help="days of logs (default 120)")
    ev.add_argument("--seeds", type=int, default=3, help="data sets / splits / inits (default 3)")
    ev.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ev.add_argument("--qubits", type=int, choices=(2, 4), default=4, help="QFNN qubits (default 4)")
    ev.add_argument("--layers", type=int, default=3, help="QFNN trainable layers (default 3)")
    ev.add_argument("--steps", type=int, default=150, help="QFNN Adam steps (default 150)")
    ev.add_argument("--shots", type=int, default=1024, help="shots per row on qiskit-aer (default 1024)")
    ev.add_argument(
        "--shots-rows",
        type=int,
        default=2000,
        help="test rows read with shots (default 2000: all insider days and a random sample of benign ones)",
    )
    ev.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per seed (default 200)")
    ev.add_argument(
        "--out", type=Path, default=Path("qlink-gate"), help="output folder (default ./qlink-gate)"
    )
    ev.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    ev.add_argument("--quick", action="store_true", help="a small run for tests (120 users, 60 days, 1 seed)")
    ev.set_defaults(run=run_evaluate)
    sc = sub.add_parser(
        "scenario",
        help="20 ordinary users and one insider against the gate on a loopback testbed",
        description="Start a loopback testbed whose hospital-b enforces the intent gate, replay weeks of "
        "ordinary requests by 20 users, then let an insider bulk-fetch other departments' studies at night; "
        "the insider must be stepped up (and, under break-glass, refused) before the bulk leaves, the "
        "others never, all audited. Exit 0 when every check holds.",
    )
    sc.add_argument("--days", type=int, default=30, help="days of history replayed before today (30)")
    sc.add_argument("--seed", type=int, default=0, help="seed of the simulated behaviour (0)")
    sc.add_argument(
        "--deny-at", type=float, default=0.75, help="hospital-b's [gate] deny_at for the scenario (0.75)"
    )
    sc.add_argument("--keep", type=Path, metavar="DIR", help="run in DIR (new or empty) and keep it")
    sc.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for each step (120)")
    sc.add_argument("--json", action="store_true", help="print the summary as JSON")
    sc.set_defaults(run=run_scenario)


def run_scenario(args: argparse.Namespace) -> int:
    import tempfile

    if not 1 <= args.days <= 60 or not 0.0 < args.deny_at <= 1.0:
        print("qlink gate scenario: error: --days must be 1..60 and --deny-at in (0, 1]", file=sys.stderr)
        return EXIT_USAGE
    if args.keep is not None:
        root = args.keep.resolve()
        if root.exists() and any(root.iterdir()):
            print(f"qlink gate scenario: error: {args.keep} is not empty", file=sys.stderr)
            return EXIT_USAGE
        return _scenario_in(root, args)
    with tempfile.TemporaryDirectory(prefix="qlink-gate-scenario-") as tmp:
        return _scenario_in(Path(tmp), args)


def _scenario_in(root: Path, args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.testbed.deployment import write_loopback_deployment
    from qlinkmed.qlinkd.testbed.launcher import ProcessGroup

    from ..daemon_http import ApiError
    from ..gate_scenario import B, Scenario, format_summary, scenario_config

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    # A small pool target: once it is full the link stops distilling key, so the gate's requests do not
    # share two cores with Cascade (the scenario needs little key: one session key per study).
    deployment = write_loopback_deployment(
        root / "deployment", pulses_per_round=700_000, low_watermark_bits=300_000, high_watermark_bits=600_000
    )
    config_b = deployment.facilities[B]
    config_b.write_text(config_b.read_text() + scenario_config(args.deny_at))
    group = ProcessGroup(deployment)
    try:
        group.start_all(timeout=args.timeout)
        scenario = Scenario(deployment, seed=args.seed, history_days=args.days, timeout=args.timeout)
        scenario.wait_for_key()
        folder = root / "studies"
        folder.mkdir()
        started = time.monotonic()
        scenario.send_studies(folder)
        say(f"{sum(map(len, scenario.studies.values()))} studies delivered to {B}")
        scenario.add_people()
        scenario.replay_history()
        say(f"{args.days} days of history replayed in {time.monotonic() - started:.1f} s")
        scenario.ordinary_today()
        tonight = scenario.insider_tonight()
        summary = scenario.summary(tonight)
    except (TimeoutError, RuntimeError, OSError, ApiError) as exc:
        print(f"qlink gate scenario: {str(exc).splitlines()[0]}", file=sys.stderr)
        print(f"qlink gate scenario: logs are in {root}/deployment/*.log", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        group.stop_all()
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK if summary["ok"] else EXIT_FAILURE


def run_evaluate(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    from qlinkmed.qcore.errors import ConfigError

    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    problems = [
        f"--{flag.replace('_', '-')} must be at least {low}"
        for flag, low in (("seeds", 1), ("steps", 1), ("shots", 1), ("shots_rows", 10), ("bootstrap", 10))
        if getattr(args, flag) < low
    ]
    if args.layers < 1 or args.layers > 10:
        problems.append("--layers must be 1..10")
    if problems:
        print(f"qlink gate evaluate: {problems[0]}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with threadpool_limits(limits=1):
            results = _evaluate(args)
    except ConfigError as exc:
        print(f"qlink gate evaluate: {exc.message} (--{exc.field})", file=sys.stderr)
        return EXIT_USAGE
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(_format(results))
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from qlinkmed.qcore.intent import baselines, evaluate, qfnn, shots
    from qlinkmed.qcore.intent.cert_synth import SynthConfig, generate
    from qlinkmed.qcore.intent.features import FULL, REQUEST, from_logs

    config = SynthConfig(users=args.users, days=args.days)
    train_config = qfnn.TrainConfig(qubits=args.qubits, layers=args.layers, steps=args.steps)
    qname = f"qfnn-{args.qubits}q"
    runs: list[evaluate.Run] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    shot_rows: list[dict[str, Any]] = []
    imbalance: dict[str, Any] = {}
    latency: dict[str, float] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for s in range(args.seeds):

        def rng(stream: int, s: int = s) -> np.random.Generator:
            return np.random.default_rng([args.seed, s, stream])

        logs = generate(config, rng(0))
        feats = from_logs(logs)
        test = evaluate.split_by_user(feats.user, feats.label, rng(1))
        if s == 0:
            imbalance = {
                "users": args.users,
                "insiders": len(logs.insiders),
                "user_days": len(feats.label),
                "malicious_user_days": int(feats.label.sum()),
                "malicious_share": float(feats.label.mean()),
                "test_user_days": int(test.sum()),
                "test_malicious_user_days": int(feats.label[test].sum()),
                "all_benign_test_accuracy": float(1.0 - feats.label[test].mean()),
            }
        for fs in (REQUEST, FULL):
            g = feats.subset(fs)
            x_tr, y_tr, x_te, y_te = g.x[~test], g.label[~test], g.x[test], g.label[test]
            for name in (qname, *baselines.BASELINES):
                # CPU time of this process, not wall time: on a shared machine the wall clock measures
                # the neighbours (a 1.2 s QFNN fit read 57 s of wall time at a load of 12 on 2 cores).
                started = time.process_time()
                model: Any
                if name == qname:
                    model, _ = qfnn.train(x_tr, y_tr, fs, train_config, rng(2))
                else:
                    model = baselines.train(name, x_tr, y_tr, rng(2))
                train_s = time.process_time() - started
                started = time.process_time()
                score = model.score(x_te)
                infer = (time.process_time() - started) / max(1, len(x_te))
                threshold = evaluate.threshold_at_fpr(model.score(x_tr), y_tr, evaluate.OPERATING_FPR)
                point = evaluate.point_metrics(score, y_te, threshold)
                reps = evaluate.bootstrap(score, y_te, g.user[test], threshold, rng(3), args.bootstrap)
                runs.append(evaluate.Run(name, fs.name, point, reps, train_s, infer))
                if s == 0:
                    curves.setdefault(fs.name, {})[name] = evaluate.roc_curve(score, y_te)
                if s == 0 and name == qname:
                    shot_rows.append(_shots(model, x_te, y_te, args, rng(4), shots.sampled_scores, evaluate))
                    if fs is REQUEST:
                        saved = qfnn.QfnnModel(
                            feature_set=model.feature_set,
                            qubits=model.qubits,
                            layers=model.layers,
                            params=model.params,
                            transform=model.transform,
                            cost=model.cost,
                            threshold=threshold,
                        )
                        (args.out / "qfnn-request.json").write_bytes(saved.to_bytes())
                        latency = _latency(qfnn.QfnnModel.from_bytes(saved.to_bytes()), x_te)
    summaries = evaluate.summarise(runs)
    _plot(curves, args.out / "roc.png", imbalance)
    return {
        "config": {
            k: getattr(args, k)
            for k in ("users", "days", "seeds", "seed", "qubits", "layers", "steps", "shots", "bootstrap")
        },
        "imbalance": imbalance,
        "models": [_summary_json(x) for x in summaries],
        "shots": shot_rows,
        "latency_us": latency,
        "paper_accuracy": PAPER_ACCURACY,
        "files": {
            "roc": str(args.out / "roc.png"),
            "model": str(args.out / "qfnn-request.json"),
            "results": str(args.out / "results.json"),
        },
    }


def _shots(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    args: argparse.Namespace,
    rng: np.random.Generator,
    sample: Any,
    evaluate: Any,
) -> dict[str, Any]:
    """The exact and the shot-estimated QFNN on the same rows: every insider day, then benign ones."""
    import numpy as np

    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    take = max(0, args.shots_rows - len(pos))
    rows = np.concatenate([pos, rng.choice(neg, size=min(take, len(neg)), replace=False)])
    exact = model.score(x[rows])
    started = time.perf_counter()
    est = sample(model, x[rows], shots=args.shots, seed=args.seed)
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {
        "feature_set": model.feature_set.name,
        "rows": len(rows),
        "shots_per_row": args.shots,
    }
    for label, s in (("exact", exact), ("shots", est)):
        out[label] = {
            "auc": evaluate.auc(s, y[rows]),
            "recall_at_1pct_fpr": evaluate.recall_at_fpr(s, y[rows], 0.01),
            "recall_at_5pct_fpr": evaluate.recall_at_fpr(s, y[rows], 0.05),
        }
    out["mean_abs_error"] = float(np.abs(est - exact).mean())
    out["aer_s_per_row"] = elapsed / len(rows)
    return out


def _latency(model: Any, x: np.ndarray) -> dict[str, float]:
    """Per-request scoring time of the loaded model: one row at a time, as the gate would call it."""
    import numpy as np

    rows = x[: min(len(x), 2000)]
    times = np.empty(len(rows))
    for i in range(len(rows)):
        started = time.perf_counter()
        model.score(rows[i])
        times[i] = time.perf_counter() - started
    return {"p50": float(np.percentile(times, 50) * 1e6), "p99": float(np.percentile(times, 99) * 1e6)}


def _summary_json(s: Summary) -> dict[str, Any]:
    return {
        "model": s.model,
        "feature_set": s.feature_set,
        "seeds": s.seeds,
        "metrics": {k: {"mean": s.mean[k], "low": s.low[k], "high": s.high[k]} for k in s.mean},
        "train_s": s.train_s,
        "infer_us_per_row": s.infer_us_per_row,
    }


def _plot(
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path, imbalance: dict[str, Any]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 5), squeeze=False)
    for ax, (fs, models) in zip(axes[0], curves.items(), strict=True):
        for name, (fpr, tpr) in models.items():
            ax.plot(fpr, tpr, label=name, drawstyle="steps-post")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        for limit in (0.01, 0.05):
            ax.axvline(limit, color="lightgrey", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false-positive rate (benign user-days flagged)")
        ax.set_ylabel("recall (malicious user-days flagged)")
        ax.set_title(f"feature set '{fs}' (seed 0, held-out users)")
        ax.legend(loc="lower right")
    share = imbalance.get("malicious_share", 0.0)
    fig.suptitle(
        f"Request-intention gate on synthetic CERT r4.2-shaped logs ({share:.2%} malicious user-days)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _format(results: dict[str, Any]) -> str:
    def cell(m: dict[str, float], pct: bool = True) -> str:
        f = (lambda v: f"{100 * v:5.1f}") if pct else (lambda v: f"{v:5.3f}")
        if m["mean"] != m["mean"]:  # NaN: nothing flagged on any seed
            return "  n/a".ljust(20)
        return f"{f(m['mean'])} [{f(m['low']).strip()}-{f(m['high']).strip()}]".ljust(20)

    imb = results["imbalance"]
    lines = [
        f"synthetic CERT r4.2-shaped logs: {imb['users']} users, {imb['insiders']} insiders, "
        f"{imb['user_days']} user-days of which {imb['malicious_user_days']} malicious "
        f"({100 * imb['malicious_share']:.2f} %); held out by user, {results['config']['seeds']} seed(s)",
        "",
        f"{'model':10} {'features':8} {'AUC':20} {'recall@1%FPR %':20} {'recall@5%FPR %':20} "
        f"{'precision %':20} {'accuracy %':20} {'train s':>8} {'infer us/row':>12}  (CPU time)",
    ]
    for m in results["models"]:
        k = m["metrics"]
        lines.append(
            f"{m['model']:10} {m['feature_set']:8} {cell(k['auc'], pct=False)} "
            f"{cell(k['recall_at_1pct_fpr'])} {cell(k['recall_at_5pct_fpr'])} {cell(k['precision'])} "
            f"{cell(k['accuracy'])} {m['train_s']:8.2f} {m['infer_us_per_row']:12.2f}"
        )
    lines += [
        "",
        "[lo-hi]: 95 % bootstrap interval over test users, pooled over seeds; precision and accuracy at the "
        "threshold giving 1 % false positives on the training users.",
        "",
    ]
    for row in results["shots"]:
        e, s = row["exact"], row["shots"]
        lines.append(
            f"QFNN on qiskit-aer, {row['shots_per_row']} shots, {row['rows']} test rows "
            f"({row['feature_set']}): "
            f"AUC {s['auc']:.3f} (exact {e['auc']:.3f}), recall@1%FPR {100 * s['recall_at_1pct_fpr']:.1f} % "
            f"(exact {100 * e['recall_at_1pct_fpr']:.1f} %), mean |p_shots - p| {row['mean_abs_error']:.4f}, "
            f"{1e3 * row['aer_s_per_row']:.2f} ms/row"
        )
    lat = results["latency_us"]
    if lat:
        lines.append(
            f"per-request scoring of the saved model (numpy statevector): p50 {lat['p50']:.0f} us, "
            f"p99 {lat['p99']:.0f} us"
        )
    best = max(results["models"], key=lambda m: m["metrics"]["accuracy"]["mean"])
    lines += [
        "",
        "paper (IQ-HDM, CERT r4.2): accuracy 89.02 %; here: "
        f"{100 * best['metrics']['accuracy']['mean']:.2f} % "
        f"({best['model']}, {best['feature_set']}), and {100 * imb['all_benign_test_accuracy']:.2f} % for "
        "calling every user-day benign.",
        "Not comparable: our logs are synthetic with r4.2's schema and imbalance (under 1 % malicious "
        "user-days), the paper's set and split are not published; with this imbalance accuracy rewards doing "
        "nothing, so judge AUC and recall at a fixed false-positive rate.",
        f"wrote {results['files']['roc']}, {results['files']['model']}, {results['files']['results']}",
    ]
    return "\n".join(lines)
