"""The evaluation: the split keeps every user on one side with insiders on both, the metrics equal an
independent implementation's, recall at a false-positive rate respects that rate, the bootstrap resamples
users."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from qlinkmed.qcore.intent import baselines, evaluate


def test_split_by_user_puts_each_user_on_one_side_with_insiders_on_both() -> None:
    rng = np.random.default_rng(0)
    user = rng.integers(0, 300, 20_000)
    label = np.isin(user, np.arange(20)) & (rng.random(len(user)) < 0.1)
    for seed in range(5):
        test = evaluate.split_by_user(user, label, np.random.default_rng(seed))
        assert not set(user[test]) & set(user[~test])
        assert label[test].any() and label[~test].any()
        assert 0.2 < test.mean() < 0.4


def test_auc_equals_sklearn_and_recall_respects_the_fpr() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(5000) < 0.05
    scores = rng.normal(size=5000) + labels * 1.5
    scores[:100] = 0.25  # ties
    assert evaluate.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for fpr in (0.01, 0.05):
        t = evaluate.threshold_at_fpr(scores, labels, fpr)
        assert (scores[~labels] > t).mean() <= fpr
        assert evaluate.recall_at_fpr(scores, labels, fpr) == pytest.approx((scores[labels] > t).mean())
    fpr_curve, tpr_curve = evaluate.roc_curve(scores, labels)
    assert np.trapezoid(tpr_curve, fpr_curve) == pytest.approx(evaluate.auc(scores, labels), abs=1e-3)


def test_bootstrap_resamples_users_and_summary_pools_seeds() -> None:
    rng = np.random.default_rng(2)
    user = np.repeat(np.arange(60), 50)
    labels = np.isin(user, np.arange(6)) & (rng.random(len(user)) < 0.3)
    scores = rng.normal(size=len(user)) + labels * 2.0
    reps = evaluate.bootstrap(scores, labels, user, 1.0, rng, reps=50)
    assert reps.shape == (50, len(evaluate.METRICS))
    assert np.nanstd(reps[:, 0]) > 0
    point = evaluate.point_metrics(scores, labels, 1.0)
    runs = [evaluate.Run("m", "request", point, reps, 1.0, 1e-6)] * 2
    (summary,) = evaluate.summarise(runs)
    assert summary.seeds == 2 and summary.low["auc"] <= summary.mean["auc"] <= summary.high["auc"]


@pytest.mark.parametrize("name", baselines.BASELINES)
def test_baselines_rank_a_separable_set(name: str) -> None:
    rng = np.random.default_rng(3)
    y = rng.random(3000) < 0.05
    x = rng.normal(size=(3000, 5))
    x[y] += 4.0
    with threadpool_limits(limits=1):  # OpenMP threads on a shared 2-core machine only thrash
        model = baselines.train(name, x[:2000], y[:2000], rng)
    assert evaluate.auc(model.score(x[2000:]), y[2000:]) > 0.9
