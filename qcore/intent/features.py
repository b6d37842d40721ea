"""Per user-day feature vectors, computed by one function from logs with the `cert_synth` schema: from the
synthetic logs for training, and (later, in the daemon) from a requests table built out of qlink's audit.

Two named feature sets:

- ``request`` (REQUEST): what the daemon can compute from its own request history alone. The paper's AU
  (Eq. 11: 1 when the user has no request before today), AD (Eqs. 12-13 as a fraction: today's requests
  outside the user's authorised departments, over today's requests), RF (Eqs. 14-18: the past-breach
  ratio Pi = unauthorised / all requests over the window before today, times the frequency FDB = the
  number of unauthorised requests in that window), the number of unauthorised departments asked today,
  and request count, volume and night-share anomalies against the user's own window.
- ``full`` (FULL): ``request`` plus the CERT behaviour features: after-hours logons and logons on another
  user's PC, first-ever and anomalous removable-drive use, file copies to removable media, job / leak /
  hacking web visits, external and mass email.

"Against the user's own history" means the W days before today (W = `window`, 30 by default), counting
only days the user was active: z = (today - mean) / (std + 1), the +1 keeping a quiet user's first busy
day finite. Nothing looks at future days, so a row can be computed when its day ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .cert_schema import COMPANY_DOMAIN, DAY_S, DEPARTMENTS, HACK_SITES, HOUR_S, JOB_SITES, LEAK_SITES
from .cert_synth import SyntheticLogs

WORK_HOURS = (7, 19)
"""Local hours counted as working time; anything else is after hours (r4.2's usual cut)."""
MASS_EMAIL_RECIPIENTS = 10
_TEXT = np.dtypes.StringDType()


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """A named, ordered list of feature columns; models record the name so the daemon computes the same."""

    name: str
    names: tuple[str, ...]


REQUEST = FeatureSet(
    "request",
    ("au_new", "ad_fraction", "rf", "unauth_departments", "request_z", "volume_z", "night_share_delta"),
)
FULL = FeatureSet(
    "full",
    (
        *REQUEST.names,
        "afterhours_logon_delta",
        "other_pc_logons",
        "device_first_use",
        "device_z",
        "file_copy_z",
        "http_job",
        "http_leak",
        "http_hack",
        "email_external_z",
        "email_mass",
    ),
)
FEATURE_SETS = {s.name: s for s in (REQUEST, FULL)}


@dataclass(frozen=True, slots=True)
class Features:
    """Rows are active user-days; `x[:, i]` is feature `names[i]`."""

    x: np.ndarray
    names: tuple[str, ...]
    user: np.ndarray
    day: np.ndarray
    label: np.ndarray

    def subset(self, feature_set: FeatureSet) -> Features:
        """The same rows with only `feature_set`'s columns, in its order."""
        cols = [self.names.index(n) for n in feature_set.names]
        return Features(self.x[:, cols], feature_set.names, self.user, self.day, self.label)


def feature_set(name: str) -> FeatureSet:
    try:
        return FEATURE_SETS[name]
    except KeyError:
        raise ConfigError("feature_set", f"unknown '{name}' (known: {', '.join(FEATURE_SETS)})") from None


def from_logs(logs: SyntheticLogs, *, window: int = 30, warmup: int = 14) -> Features:
    """The FULL features of every active user-day after `warmup` days, labelled by `logs.malicious`."""
    d = logs.directory
    return user_day_features(
        logs.tables,
        user_ids=d.user_ids,
        own_pc=d.own_pc,
        authorised=d.authorised,
        start=logs.start,
        days=logs.days,
        window=window,
        warmup=warmup,
        malicious=logs.malicious,
    )


def user_day_features(
    tables: dict[str, dict[str, np.ndarray]],
    *,
    user_ids: np.ndarray,
    own_pc: np.ndarray,
    authorised: np.ndarray,
    start: np.datetime64,
    days: int,
    window: int = 30,
    warmup: int = 0,
    malicious: np.ndarray | None = None,
    departments: tuple[str, ...] = DEPARTMENTS,
    work_hours: tuple[float, float] = WORK_HOURS,
) -> Features:
    """Features of every user-day with activity, days `warmup` .. `days`-1. `user_ids` must be sorted;
    `authorised` is (users, len(departments)). Tables other than ``requests`` may be absent (their
    features are then 0): the daemon passes only its requests, with its own department names and working
    hours. Records of users not in `user_ids` or outside the period are ignored."""
    if window < 1:
        raise ConfigError("window", f"must be at least 1 day, got {window}")
    n = len(user_ids)
    grid = _Grid(n, days, start, user_ids)
    req = tables["requests"]
    r_user, r_day, r_hour, r_keep = grid.place(req)
    # Unknown department names count as unauthorised (index len(departments), no one's column).
    dept_names, inverse = np.unique(np.asarray(req["department"])[r_keep].astype(_TEXT), return_inverse=True)
    known = {name: i for i, name in enumerate(departments)}
    dept = np.array([known.get(str(x), len(departments)) for x in dept_names], dtype=np.int64)[inverse]
    padded = np.concatenate([authorised, np.zeros((n, 1), dtype=bool)], axis=1)
    unauth = ~padded[r_user, dept]
    requests = grid.count(r_user, r_day)
    unauth_n = grid.count(r_user, r_day, unauth)
    volume = grid.count(r_user, r_day, weight=req["volume"][r_keep].astype(np.float64))
    night = grid.count(r_user, r_day, _after_hours(r_hour, work_hours))
    depts = np.zeros((n, days, len(departments) + 1), dtype=bool)
    depts[r_user[unauth], r_day[unauth], dept[unauth]] = True
    active = requests > 0

    cols: dict[str, np.ndarray] = {}
    prior_requests = np.cumsum(requests, axis=1) - requests
    cols["au_new"] = (prior_requests == 0).astype(np.float64)
    cols["ad_fraction"] = np.divide(unauth_n, requests, out=np.zeros_like(unauth_n), where=requests > 0)
    h_req, h_unauth = _window_sum(requests, window), _window_sum(unauth_n, window)
    pi = np.divide(h_unauth, h_req, out=np.zeros_like(h_req), where=h_req > 0)
    cols["rf"] = pi * h_unauth
    cols["unauth_departments"] = depts.sum(axis=2).astype(np.float64)
    cols["request_z"] = _z(requests, requests > 0, window)
    cols["volume_z"] = _z(np.log1p(volume), requests > 0, window)
    share = np.divide(night, requests, out=np.zeros_like(night), where=requests > 0)
    h_night = _window_sum(night, window)
    cols["night_share_delta"] = share - np.divide(h_night, h_req, out=np.zeros_like(h_night), where=h_req > 0)

    active |= _behaviour(cols, tables, grid, own_pc, window, work_hours)
    names = FULL.names
    rows = active.copy()
    rows[:, :warmup] = False
    user, day = np.nonzero(rows)
    x = np.stack([cols.get(name, np.zeros((n, days)))[user, day] for name in names], axis=1)
    label = malicious[user, day] if malicious is not None else np.zeros(len(user), dtype=bool)
    return Features(x, names, user, day, label)


@dataclass(frozen=True, slots=True)
class _Grid:
    users: int
    days: int
    start: np.datetime64
    user_ids: np.ndarray

    def place(self, table: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user index, day, hour of day, kept-rows mask) of a table's records inside the grid."""
        ids = np.asarray(self.user_ids).astype(_TEXT)
        names = np.asarray(table["user"]).astype(_TEXT)
        index = np.searchsorted(ids, names)
        known = index < len(ids)
        known[known] = ids[index[known]] == names[known]
        seconds = (table["date"].astype("datetime64[s]") - self.start.astype("datetime64[s]")).astype(
            np.int64
        )
        inside = known & (seconds >= 0) & (seconds < self.days * DAY_S)
        seconds = seconds[inside]
        return index[inside], seconds // DAY_S, (seconds % DAY_S) / HOUR_S, inside

    def count(
        self,
        user: np.ndarray,
        day: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        weight: np.ndarray | None = None,
    ) -> np.ndarray:
        """A (users, days) float matrix of record counts (or summed weights), of the masked records."""
        if mask is not None:
            user, day = user[mask], day[mask]
            weight = weight[mask] if weight is not None else None
        flat = np.bincount(user * self.days + day, weights=weight, minlength=self.users * self.days)
        return flat.astype(np.float64).reshape(self.users, self.days)


def _after_hours(hour: np.ndarray, work_hours: tuple[float, float]) -> np.ndarray:
    return (hour < work_hours[0]) | (hour >= work_hours[1])


def _window_sum(m: np.ndarray, window: int) -> np.ndarray:
    """For each day, the sum of `m` over the `window` days before it (today excluded)."""
    c = np.concatenate([np.zeros((m.shape[0], 1)), np.cumsum(m, axis=1)], axis=1)
    d = np.arange(m.shape[1])
    return np.asarray(c[:, d] - c[:, np.maximum(d - window, 0)])


def _z(m: np.ndarray, active: np.ndarray, window: int) -> np.ndarray:
    """Today's value against the mean and spread of the user's active days in the window before it."""
    n = _window_sum(active.astype(np.float64), window)
    s1 = _window_sum(m * active, window)
    s2 = _window_sum(m * m * active, window)
    mean = np.divide(s1, n, out=np.zeros_like(s1), where=n > 0)
    var = np.divide(s2, n, out=np.zeros_like(s2), where=n > 0) - mean * mean
    return np.asarray((m - mean) / (np.sqrt(np.maximum(var, 0.0)) + 1.0))


def _host_is(url: np.ndarray, hosts: tuple[str, ...]) -> np.ndarray:
    hit = np.zeros(len(url), dtype=bool)
    for host in hosts:
        hit |= np.strings.startswith(url, f"http://{host}/")
    return hit


def _behaviour(
    cols: dict[str, np.ndarray],
    tables: dict[str, dict[str, np.ndarray]],
    grid: _Grid,
    own_pc: np.ndarray,
    window: int,
    work_hours: tuple[float, float],
) -> np.ndarray:
    """Adds the CERT behaviour features present in `tables`; returns the user-days active in them."""
    active = np.zeros((grid.users, grid.days), dtype=bool)
    if "logon" in tables:
        t = tables["logon"]
        u, d, h, keep = grid.place(t)
        on = np.asarray(t["activity"])[keep].astype(_TEXT) == "Logon"
        logons = grid.count(u, d, on)
        after = grid.count(u, d, on & _after_hours(h, work_hours))
        h_after, h_days = _window_sum(after, window), _window_sum((logons > 0).astype(np.float64), window)
        mean = np.divide(h_after, h_days, out=np.zeros_like(h_after), where=h_days > 0)
        cols["afterhours_logon_delta"] = after - mean
        other = np.asarray(t["pc"])[keep].astype(_TEXT) != np.asarray(own_pc).astype(_TEXT)[u]
        cols["other_pc_logons"] = grid.count(u, d, on & other)
        active |= logons > 0
    if "device" in tables:
        t = tables["device"]
        u, d, _, keep = grid.place(t)
        connects = grid.count(u, d, np.asarray(t["activity"])[keep].astype(_TEXT) == "Connect")
        before = np.cumsum(connects, axis=1) - connects
        cols["device_first_use"] = ((connects > 0) & (before == 0)).astype(np.float64)
        cols["device_z"] = _z(connects, active, window)
    if "file" in tables:
        u, d, _, _ = grid.place(tables["file"])
        cols["file_copy_z"] = _z(grid.count(u, d), active, window)
    if "http" in tables:
        t = tables["http"]
        u, d, _, keep = grid.place(t)
        url = np.asarray(t["url"])[keep].astype(_TEXT)
        cols["http_job"] = grid.count(u, d, _host_is(url, JOB_SITES))
        cols["http_leak"] = grid.count(u, d, _host_is(url, LEAK_SITES))
        cols["http_hack"] = grid.count(u, d, _host_is(url, HACK_SITES))
        active |= grid.count(u, d) > 0
    if "email" in tables:
        t = tables["email"]
        u, d, _, keep = grid.place(t)
        to = np.asarray(t["to"])[keep].astype(_TEXT)
        recipients = np.strings.count(to, "@")
        internal = np.strings.count(to, f"@{COMPANY_DOMAIN}")
        cols["email_external_z"] = _z(grid.count(u, d, recipients > internal), active, window)
        cols["email_mass"] = grid.count(u, d, recipients >= MASS_EMAIL_RECIPIENTS)
        active |= grid.count(u, d) > 0
    return active
