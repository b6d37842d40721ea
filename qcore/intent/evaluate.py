"""The honest evaluation: a held-out split by USER (all of a user's days on one side), threshold-free
scores (AUC, recall at 1 % and 5 % false-positive rate) and, at an operating threshold chosen on the
training users (1 % false positives there), precision and accuracy; confidence intervals by a bootstrap
over test USERS (their days are not independent), pooled over the seeds. Time is measured by the caller
and passed in: this module has no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..errors import ConfigError

METRICS = ("auc", "recall_at_1pct_fpr", "recall_at_5pct_fpr", "precision", "accuracy")
OPERATING_FPR = 0.01


def split_by_user(
    user: np.ndarray, label: np.ndarray, rng: np.random.Generator, test_fraction: float = 0.3
) -> np.ndarray:
    """A boolean mask of test rows: `test_fraction` of the users with an insider day and of the others,
    drawn separately (so both sides hold insiders), every row of a user on the same side."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", f"must be in (0, 1), got {test_fraction}")
    users = np.unique(user)
    bad = np.isin(users, np.unique(user[label.astype(bool)]))
    chosen = []
    for group in (users[bad], users[~bad]):
        k = round(len(group) * test_fraction)
        if len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        chosen.append(rng.choice(group, size=k, replace=False))
    return np.isin(user, np.concatenate(chosen))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The lowest threshold t with at most `fpr` of the negatives scoring above t (score > t flags)."""
    neg = np.sort(scores[~labels.astype(bool)])[::-1]
    if len(neg) == 0:
        return float("inf")
    k = int(np.floor(fpr * len(neg)))
    return float(neg[min(k, len(neg) - 1)])


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    labels = labels.astype(bool)
    if not labels.any():
        return float("nan")
    return float((scores[labels] > threshold_at_fpr(scores, labels, fpr)).mean())


def point_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """The METRICS, in order, of one set of scores; precision is NaN when nothing is flagged."""
    labels = labels.astype(bool)
    flagged = scores > threshold
    precision = float((flagged & labels).sum() / flagged.sum()) if flagged.any() else float("nan")
    return np.array(
        [
            auc(scores, labels),
            recall_at_fpr(scores, labels, 0.01),
            recall_at_fpr(scores, labels, 0.05),
            precision,
            float((flagged == labels).mean()),
        ]
    )


def bootstrap(
    scores: np.ndarray,
    labels: np.ndarray,
    user: np.ndarray,
    threshold: float,
    rng: np.random.Generator,
    reps: int = 200,
) -> np.ndarray:
    """(reps, len(METRICS)): the metrics on test sets resampled by user, with replacement."""
    order = np.argsort(user, kind="stable")
    users, starts, counts = np.unique(user[order], return_index=True, return_counts=True)
    out = np.empty((reps, len(METRICS)))
    for r in range(reps):
        pick = rng.integers(0, len(users), len(users))
        rows = order[np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in pick])]
        out[r] = point_metrics(scores[rows], labels[rows], threshold)
    return out


@dataclass(frozen=True, slots=True)
class Run:
    """One model on one seed's split: point metrics, bootstrap replicates and the caller's timings."""

    model: str
    feature_set: str
    point: np.ndarray
    replicates: np.ndarray
    train_s: float
    infer_s_per_row: float


@dataclass(frozen=True, slots=True)
class Summary:
    """A model over all seeds: mean point metric and the 2.5-97.5 % bootstrap interval of each."""

    model: str
    feature_set: str
    seeds: int
    mean: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    train_s: float
    infer_us_per_row: float


def summarise(runs: list[Run]) -> list[Summary]:
    """One Summary per (model, feature set), in the order first seen."""
    keys: list[tuple[str, str]] = []
    for run in runs:
        if (run.model, run.feature_set) not in keys:
            keys.append((run.model, run.feature_set))
    out = []
    for model, fs in keys:
        mine = [r for r in runs if (r.model, r.feature_set) == (model, fs)]
        points = np.stack([r.point for r in mine])
        reps = np.concatenate([r.replicates for r in mine])
        mean = np.nanmean(points, axis=0) if np.isfinite(points).any() else points[0]
        low = np.nanpercentile(reps, 2.5, axis=0)
        high = np.nanpercentile(reps, 97.5, axis=0)
        out.append(
            Summary(
                model=model,
                feature_set=fs,
                seeds=len(mine),
                mean=dict(zip(METRICS, map(float, mean), strict=True)),
                low=dict(zip(METRICS, map(float, low), strict=True)),
                high=dict(zip(METRICS, map(float, high), strict=True)),
                train_s=float(np.mean([r.train_s for r in mine])),
                infer_us_per_row=float(np.mean([r.infer_s_per_row for r in mine]) * 1e6),
            )
        )
    return out


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    labels = labels.astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(1, y.sum())]
    fpr = np.r_[0.0, fp / max(1, (~y).sum())]
    return fpr, tpr
