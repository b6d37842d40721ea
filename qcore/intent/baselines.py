"""Classical baselines on the same features as the QFNN (scikit-learn): logistic regression, gradient-
boosted trees and an isolation forest. Each trained model scores rows with "higher = more suspicious",
like `QfnnModel.score`, so the evaluation treats all models alike.

- logistic regression: signed-log features (as the QFNN's map), standardised, class-balanced weights;
- gradient-boosted trees: scikit-learn's histogram GBT, class-balanced, 200 iterations;
- isolation forest: unsupervised (labels unused), 200 trees; score = minus sklearn's `score_samples`.
Seeds come from the Generator passed in. scikit-learn is imported inside `train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

BASELINES = ("logreg", "gbt", "iforest")


def signed_log(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)))


@dataclass(frozen=True, slots=True)
class BaselineModel:
    """A fitted scikit-learn estimator behind the common `score` interface."""

    name: str
    estimator: Any

    def score(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if self.name == "iforest":
            return np.asarray(-self.estimator.score_samples(x))
        if self.name == "logreg":
            x = signed_log(x)
        return np.asarray(self.estimator.predict_proba(x)[:, 1])


def train(name: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> BaselineModel:
    """Fit baseline `name` (one of BASELINES) on rows x with labels y."""
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = int(rng.integers(0, 2**31 - 1))
    y = np.asarray(y).astype(bool)
    if name == "logreg":
        est: Any = make_pipeline(
            StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)
        ).fit(signed_log(x), y)
    elif name == "gbt":
        est = HistGradientBoostingClassifier(
            class_weight="balanced", max_iter=200, early_stopping=False, random_state=seed
        ).fit(x, y)
    elif name == "iforest":
        est = IsolationForest(n_estimators=200, random_state=seed).fit(x)
    else:
        raise ConfigError("model", f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")
    return BaselineModel(name, est)
