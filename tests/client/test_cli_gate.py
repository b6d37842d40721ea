"""`qlink gate evaluate --quick` end to end: the table, the JSON with every model on both feature sets,
a PNG that decodes, and a model file the daemon's loader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from qlinkmed.qcore.intent.features import REQUEST
from qlinkmed.qcore.intent.qfnn import QfnnModel
from tests.cli import qlink


@pytest.mark.qiskit
def test_gate_evaluate_quick_writes_the_table_the_png_and_the_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "gate"
    code, stdout, stderr = qlink(capsys, "gate", "evaluate", "--quick", "--json", "--out", str(out))
    assert code == 0, stderr
    results = json.loads(stdout)
    assert json.loads((out / "results.json").read_text()) == results
    got = {(m["model"], m["feature_set"]) for m in results["models"]}
    assert got == {(m, fs) for m in ("qfnn-4q", "logreg", "gbt", "iforest") for fs in ("request", "full")}
    for m in results["models"]:
        for name in ("auc", "recall_at_1pct_fpr", "recall_at_5pct_fpr", "accuracy"):
            cell = m["metrics"][name]
            assert 0.0 <= cell["low"] <= cell["high"] <= 1.0, (m["model"], name, cell)
        assert m["train_s"] > 0 and m["infer_us_per_row"] > 0
    assert results["imbalance"]["malicious_share"] < 0.05
    assert {row["feature_set"] for row in results["shots"]} == {"request", "full"}
    assert results["latency_us"]["p50"] > 0
    with Image.open(out / "roc.png") as png:
        assert png.format == "PNG" and png.size[0] > 600
        png.load()
    model = QfnnModel.from_bytes((out / "qfnn-request.json").read_bytes())
    assert model.feature_set == REQUEST and model.threshold is not None


def test_gate_evaluate_refuses_bad_values(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = qlink(capsys, "gate", "evaluate", "--seeds", "0", "--out", str(tmp_path))
    assert code == 2 and "--seeds must be at least 1" in err
    code, _, err = qlink(capsys, "gate", "evaluate", "--users", "5", "--out", str(tmp_path))
    assert code == 2 and "users" in err
    code, _, err = qlink(capsys, "gate", "evaluate", "--qubits", "3")
    assert code == 2 and "--qubits" in err
