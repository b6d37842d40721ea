"""The synthetic CERT r4.2-shaped logs: reproducible from a seed, r4.2's columns, the insiders are the
labelled positives, and the imbalance is r4.2's (well under 1 % malicious user-days)."""

from __future__ import annotations

import numpy as np
import pytest

from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.intent.cert_schema import LDAP_COLUMNS, SCHEMA
from qlinkmed.qcore.intent.cert_synth import (
    SynthConfig,
    SyntheticLogs,
    cert_date_strings,
    generate,
)

SMALL = SynthConfig(users=200, days=90)


@pytest.fixture(scope="module")
def logs() -> SyntheticLogs:
    return generate(SMALL, np.random.default_rng(7))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and bool(np.all(a == b))


def test_same_seed_same_logs_other_seed_other_logs(logs: SyntheticLogs) -> None:
    again = generate(SMALL, np.random.default_rng(7))
    other = generate(SMALL, np.random.default_rng(8))
    for name, table in logs.tables.items():
        for column, values in table.items():
            assert _same(values, again.tables[name][column]), (name, column)
    assert np.array_equal(logs.malicious, again.malicious)
    assert logs.insiders == again.insiders
    assert not _same(logs.tables["http"]["date"], other.tables["http"]["date"])


def test_tables_have_r42_columns_and_sorted_dates(logs: SyntheticLogs) -> None:
    assert SCHEMA["logon"] == ("id", "date", "user", "pc", "activity")
    assert SCHEMA["email"] == (
        "id",
        "date",
        "user",
        "pc",
        "to",
        "cc",
        "bcc",
        "from",
        "size",
        "attachments",
        "content",
    )
    for name, columns in SCHEMA.items():
        table = logs.tables[name]
        assert tuple(table) == columns, name
        assert len({len(v) for v in table.values()}) == 1, name
        assert len(table["date"]) > 0, name
        assert np.all(np.diff(table["date"].astype(np.int64)) >= 0), name
    assert tuple(logs.directory.ldap) == LDAP_COLUMNS
    assert set(logs.tables["logon"]["activity"].tolist()) == {"Logon", "Logoff"}
    assert (
        cert_date_strings(np.array(["2010-01-04T07:12:00"], dtype="datetime64[s]"))[0]
        == "01/04/2010 07:12:00"
    )


def test_insiders_are_the_labelled_positives(logs: SyntheticLogs) -> None:
    ids = logs.directory.user_ids
    d = logs.directory
    insiders = {i.user for i in logs.insiders}
    # scenario 3 acts through the supervisor's account on one day: that day is malicious too
    hijacked = {
        str(d.ldap["supervisor"][np.searchsorted(ids, i.user)]) for i in logs.insiders if i.scenario == 3
    }
    flagged = {str(ids[u]) for u in np.flatnonzero(logs.malicious.any(axis=1))}
    assert insiders <= flagged
    assert flagged <= insiders | hijacked
    assert {i.scenario for i in logs.insiders} == {1, 2, 3}
    for insider in logs.insiders:
        u = int(np.searchsorted(ids, insider.user))
        days = np.flatnonzero(logs.malicious[u])
        assert insider.first_day <= days.min() and days.max() <= insider.last_day + 1
        assert d.left_day[u] > insider.last_day  # leaves after the last malicious day ...
        assert d.left_day[u] < logs.days  # ... and does leave
    # scenario 1 users had never used a removable drive before their first malicious day
    device = logs.tables["device"]
    for insider in (i for i in logs.insiders if i.scenario == 1):
        mine = device["date"][device["user"] == insider.user]
        day = (mine - logs.start).astype("timedelta64[D]").astype(np.int64)
        assert len(day) > 0 and day.min() >= insider.first_day


def test_imbalance_is_r42_like(logs: SyntheticLogs) -> None:
    assert len(logs.insiders) == round(0.07 * SMALL.users)
    active = logs.malicious.sum() / logs.malicious.size
    assert 0.0005 < active < 0.01


def test_bad_config_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        SynthConfig(users=5)
    assert caught.value.field == "users"
