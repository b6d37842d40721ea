"""The QFNN: the numpy statevector equals qiskit's, the parameter-shift gradient equals a numerical one,
training lowers the cost and separates a separable set, shot estimates on qiskit-aer stay within a
derived binomial tolerance, and the model file round-trips (and refuses what is not one)."""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import numpy as np
import pytest

from qlinkmed.qcore.errors import DecodeError
from qlinkmed.qcore.intent import qfnn
from qlinkmed.qcore.intent.evaluate import auc
from qlinkmed.qcore.intent.features import REQUEST

HAS_AER = importlib.util.find_spec("qiskit_aer") is not None


@pytest.mark.qiskit
@pytest.mark.parametrize("qubits", [2, 3, 4])
def test_numpy_statevector_equals_qiskit(qubits: int) -> None:
    from qiskit.quantum_info import Statevector

    rng = np.random.default_rng(qubits)
    for _ in range(5):
        angles = rng.uniform(-math.pi, math.pi, qubits)
        params = rng.uniform(-math.pi, math.pi, (3, qubits, 2))
        ours = qfnn.statevector(angles, params, qubits)[0]
        theirs = Statevector(qfnn.circuit(angles, params, qubits)).data
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)


def test_parameter_shift_gradient_matches_a_numerical_derivative() -> None:
    rng = np.random.default_rng(1)
    q = 4
    params = rng.uniform(-math.pi, math.pi, (3, q, 2))
    states = qfnn.embed(rng.uniform(-1.5, 1.5, (6, q)), q)
    exact = qfnn.parameter_shift_gradient(states, params, q)
    h = 1e-5
    for index in np.ndindex(params.shape):
        up, down = params.copy(), params.copy()
        up[index] += h
        down[index] -= h
        numeric = (
            qfnn.readout(states @ qfnn.trainable_unitary(up, q).T)
            - qfnn.readout(states @ qfnn.trainable_unitary(down, q).T)
        ) / (2 * h)
        np.testing.assert_allclose(exact[(slice(None), *index)], numeric, rtol=0, atol=1e-8)


def _separable(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random(n) < 0.1
    x = rng.normal(0.0, 1.0, (n, len(REQUEST.names)))
    x[y] += 3.0
    return x, y


@pytest.mark.parametrize("cost", qfnn.COSTS)
def test_training_lowers_the_cost_and_separates_a_separable_set(cost: str) -> None:
    rng = np.random.default_rng(5)
    x, y = _separable(rng, 2000)
    model, history = qfnn.train(x, y, REQUEST, qfnn.TrainConfig(qubits=2, steps=80, cost=cost), rng)
    assert np.mean(history[-10:]) < np.mean(history[:5]) - 0.05
    x_test, y_test = _separable(rng, 2000)
    assert auc(model.score(x_test), y_test) > 0.8


def _bernstein_tolerance(p: np.ndarray, shots: int, delta: float) -> np.ndarray:
    """t with P(|p_hat - p| >= t) <= delta for a mean of `shots` Bernoulli(p) draws. Bernstein:
    P(|p_hat - p| >= t) <= 2 exp(-n t^2 / (2 p(1-p) + 2t/3)); solving n t^2 = L (2 p(1-p) + 2t/3) for t,
    with L = ln(2/delta), gives the positive root below. Unlike the normal approximation it holds near
    p = 0 or 1, where a single stray count would break a z-score bound."""
    n, big_l = shots, math.log(2 / delta)
    a = 2 * big_l / 3
    return np.asarray((a + np.sqrt(a * a + 8 * n * p * (1 - p) * big_l)) / (2 * n))


@pytest.mark.qiskit
@pytest.mark.skipif(not HAS_AER, reason="qiskit-aer not installed")
def test_shot_estimates_stay_within_the_binomial_tolerance() -> None:
    from qlinkmed.qcore.intent.shots import sampled_scores

    rng = np.random.default_rng(9)
    x, y = _separable(rng, 500)
    model, _ = qfnn.train(x, y, REQUEST, qfnn.TrainConfig(qubits=4, steps=20), rng)
    rows = x[:40]
    exact = model.score(rows)
    shots = 2000
    estimate = sampled_scores(model, rows, shots=shots, seed=11)
    # delta = 1e-7 per row: the 40 rows fail together with probability under 4e-6.
    tolerance = _bernstein_tolerance(exact, shots, 1e-7)
    assert np.all(np.abs(estimate - exact) <= tolerance), np.max(np.abs(estimate - exact) - tolerance)
    # and the shots are not the exact values in disguise: some estimates differ
    assert np.any(estimate != exact)
    again = sampled_scores(model, rows, shots=shots, seed=11)
    np.testing.assert_array_equal(estimate, again)


def test_model_bytes_round_trip_and_bad_files_are_refused() -> None:
    rng = np.random.default_rng(2)
    x, y = _separable(rng, 400)
    model, _ = qfnn.train(x, y, REQUEST, qfnn.TrainConfig(qubits=4, steps=5), rng)
    data = model.to_bytes()
    back = qfnn.QfnnModel.from_bytes(data)
    assert back.feature_set == REQUEST and back.qubits == 4 and back.layers == model.layers
    np.testing.assert_array_equal(back.score(x), model.score(x))
    doc = json.loads(data)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"version": 2}, "version 2 unsupported"),
        ({"format": "other"}, "not a qlink-qfnn"),
        ({"feature_set": "full"}, "features differ"),
        ({"params": [[[0.0, 0.0]]]}, "'params' has shape"),
        ({"qubits": "many"}, "malformed"),
    ]
    for change, problem in cases:
        bad = json.dumps({**doc, **change}).encode()
        with pytest.raises(DecodeError, match=problem):
            qfnn.QfnnModel.from_bytes(bad)
    doc["transform"]["mean"][0] = float("nan")
    with pytest.raises(DecodeError, match="non-finite"):
        qfnn.QfnnModel.from_bytes(json.dumps(doc).encode())
    with pytest.raises(DecodeError, match="not JSON"):
        qfnn.QfnnModel.from_bytes(b"\xff{")
    with pytest.raises(DecodeError, match="exceeds"):
        qfnn.QfnnModel.from_bytes(b" " * (qfnn.MAX_MODEL_BYTES + 1))
