"""The features: one function, the same numbers from the same logs (whatever the row order, and from the
requests table alone for the daemon's feature set), and the paper's AU, AD and RF on a hand-made log."""

from __future__ import annotations

import numpy as np
import pytest

from qlinkmed.qcore.intent.cert_schema import DEPARTMENTS
from qlinkmed.qcore.intent.cert_synth import SynthConfig, SyntheticLogs, generate
from qlinkmed.qcore.intent.features import FULL, REQUEST, feature_set, from_logs, user_day_features


@pytest.fixture(scope="module")
def logs() -> SyntheticLogs:
    return generate(SynthConfig(users=150, days=70), np.random.default_rng(3))


def test_same_logs_same_features_whatever_the_row_order(logs: SyntheticLogs) -> None:
    a = from_logs(logs)
    rng = np.random.default_rng(0)
    shuffled = {}
    for name, table in logs.tables.items():
        order = rng.permutation(len(table["date"]))
        shuffled[name] = {c: v[order] for c, v in table.items()}
    d = logs.directory
    b = user_day_features(
        shuffled,
        user_ids=d.user_ids,
        own_pc=d.own_pc,
        authorised=d.authorised,
        start=logs.start,
        days=logs.days,
        warmup=14,
        malicious=logs.malicious,
    )
    assert a.names == FULL.names
    np.testing.assert_allclose(a.x, b.x, rtol=0, atol=1e-9)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.label, b.label)
    assert a.label.sum() > 0


def test_request_features_need_only_the_requests_table(logs: SyntheticLogs) -> None:
    full = from_logs(logs).subset(REQUEST)
    d = logs.directory
    daemon = user_day_features(
        {"requests": logs.tables["requests"]},
        user_ids=d.user_ids,
        own_pc=d.own_pc,
        authorised=d.authorised,
        start=logs.start,
        days=logs.days,
        warmup=14,
    ).subset(REQUEST)
    # The daemon's rows are its users' request days; on those, every request feature agrees.
    key = {(u, dd): i for i, (u, dd) in enumerate(zip(full.user.tolist(), full.day.tolist(), strict=True))}
    rows = [key[(u, dd)] for u, dd in zip(daemon.user.tolist(), daemon.day.tolist(), strict=True)]
    np.testing.assert_allclose(daemon.x, full.x[rows], rtol=0, atol=1e-12)


def test_au_ad_rf_on_a_hand_made_log() -> None:
    start = np.datetime64("2010-01-04T00:00:00", "s")
    ids = np.array(["AAA1000", "BBB1000"])
    authorised = np.zeros((2, len(DEPARTMENTS)), dtype=bool)
    authorised[:, DEPARTMENTS.index("Radiology")] = True
    # user 0: day 0 two requests, one unauthorised; day 1 four requests, three unauthorised (one to a
    # department name we do not know); user 1 first appears on day 1.
    rows = [
        (0, 0, "Radiology"),
        (0, 0, "Oncology"),
        (0, 1, "Radiology"),
        (0, 1, "Oncology"),
        (0, 1, "Cardiology"),
        (0, 1, "Nowhere"),
        (1, 1, "Radiology"),
    ]
    table = {
        "id": np.arange(len(rows)),
        "date": np.array([start + np.timedelta64(d * 86400 + 10 * 3600, "s") for _, d, _ in rows]),
        "user": ids[[u for u, _, _ in rows]],
        "action": np.full(len(rows), "fetch"),
        "department": np.array([x for _, _, x in rows]),
        "modality": np.full(len(rows), "CT"),
        "message_type": np.full(len(rows), "dicom"),
        "volume": np.full(len(rows), 1000),
    }
    f = user_day_features(
        {"requests": table},
        user_ids=ids,
        own_pc=np.array(["PC-1", "PC-2"]),
        authorised=authorised,
        start=start,
        days=2,
        window=30,
    ).subset(REQUEST)
    col = {n: i for i, n in enumerate(f.names)}
    row = {(int(u), int(d)): f.x[i] for i, (u, d) in enumerate(zip(f.user, f.day, strict=True))}
    assert row[(0, 0)][col["au_new"]] == 1.0 and row[(0, 1)][col["au_new"]] == 0.0
    assert row[(1, 1)][col["au_new"]] == 1.0
    assert row[(0, 0)][col["ad_fraction"]] == pytest.approx(0.5)
    assert row[(0, 1)][col["ad_fraction"]] == pytest.approx(0.75)
    assert row[(0, 1)][col["unauth_departments"]] == 3.0
    # RF on day 1: window holds day 0 only: Pi = 1/2, FDB = 1 -> RF = 0.5; on day 0 no history -> 0.
    assert row[(0, 1)][col["rf"]] == pytest.approx(0.5)
    assert row[(0, 0)][col["rf"]] == 0.0


def test_unknown_feature_set_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown 'nope'"):
        feature_set("nope")
