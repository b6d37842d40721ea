"""The user store: private on disk, tokens kept only as their hash, rotation and disabling take effect
at once, and every administrative act and break-glass grant lands in the audit log (the clock is
injected, so a grant's expiry is tested without waiting)."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.qlinkd.access.config import AccessConfig, Role
from qlinkmed.qlinkd.access.policy import DataAttributes, UserState
from qlinkmed.qlinkd.access.service import Access
from qlinkmed.qlinkd.access.store import USERS_FILE, UserStore, token_digest
from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.errors import AccessError
from qlinkmed.qlinkd.ops.audit import AuditLog

ROLES = (
    Role(name="radiology", kinds=(TransferKind.STUDY,)),
    Role(name="all-data", kinds=tuple(TransferKind)),
)
CONFIG = AccessConfig(
    roles=ROLES, break_glass_default_s=3600.0, break_glass_max_s=7200.0, break_glass_min_s=60.0
)
MESSAGE = DataAttributes(transfer_id="t-1", kind=TransferKind.EHR, peer="hospital-a")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UserStore]:
    opened = UserStore.open(tmp_path)
    yield opened
    opened.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def access(tmp_path: Path, clock: Clock, registry: CollectorRegistry) -> Iterator[Access]:
    audit = AuditLog.open(tmp_path / "audit.jsonl", facility="hospital-b")
    opened = Access.open(tmp_path, CONFIG, audit, registry=registry, clock=clock)
    yield opened
    opened.close()
    audit.close()


def _events(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_the_token_is_on_disk_only_as_its_hash_and_the_file_is_private(
    store: UserStore, tmp_path: Path
) -> None:
    user, token = store.add("alice", ("radiology",), 1.0)
    assert len(token) >= 43  # 32 bytes from the CSPRNG, base64url
    assert store.by_token(token) == user
    files = [p for p in tmp_path.iterdir() if p.name.startswith(USERS_FILE)]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    on_disk = b"".join(p.read_bytes() for p in files)
    assert token.encode() not in on_disk
    assert token_digest(token) in on_disk


def test_two_users_get_different_tokens_and_a_name_is_taken_once(store: UserStore) -> None:
    a, token_a = store.add("alice", ("radiology",), 1.0)
    b, token_b = store.add("bob", ("radiology",), 1.0)
    assert a.id != b.id and token_a != token_b
    with pytest.raises(AccessError, match="a user named 'alice' exists") as caught:
        store.add("alice", ("all-data",), 2.0)
    assert caught.value.field == "name"
    assert store.count() == 2


def test_rotation_invalidates_the_old_token_at_once(store: UserStore) -> None:
    user, old = store.add("alice", ("radiology",), 1.0)
    rotated, new = store.rotate(user.id, 5.0)
    assert new != old and rotated.rotated_at == 5.0 and rotated.created_at == 1.0
    assert store.by_token(old) is None
    assert store.by_token(new) == rotated


def test_a_disabled_user_is_found_as_disabled_and_unknown_tokens_are_none(store: UserStore) -> None:
    _, token = store.add("alice", ("radiology",), 1.0)
    store.disable("alice")  # by name as well as by id
    found = store.by_token(token)
    assert found is not None and found.state is UserState.DISABLED
    assert store.by_token("not-a-token") is None
    with pytest.raises(AccessError, match="no user 'nobody'"):
        store.disable("nobody")


def test_patients_are_assigned_and_unassigned(store: UserStore) -> None:
    user, _ = store.add("alice", ("radiology",), 1.0)
    assert store.assign(user.id, "PID-7").patients == {"PID-7"}
    assert store.assign(user.id, "PID-7", assigned=False).patients == frozenset()
    with pytest.raises(AccessError, match="patient id"):
        store.assign(user.id, "bad\nid")


def test_users_survive_a_restart(tmp_path: Path) -> None:
    first = UserStore.open(tmp_path)
    user, token = first.add("alice", ("radiology",), 1.0)
    first.close()
    again = UserStore.open(tmp_path)
    try:
        assert again.by_token(token) == user
    finally:
        again.close()


def test_adding_a_user_with_an_undefined_role_names_the_defined_ones(access: Access) -> None:
    with pytest.raises(AccessError, match="role 'nurse' is not defined \\(defined: radiology, all-data\\)"):
        access.add("alice", ("nurse",), by="root")


def test_break_glass_grants_audits_counts_and_expires_on_the_clock(
    access: Access, clock: Clock, tmp_path: Path, registry: CollectorRegistry
) -> None:
    user, _ = access.add("alice", ("radiology",), by="root")
    assert not access.decide(user, MESSAGE).allow
    granted = access.break_glass(user, "  trauma call, records needed  ", 600.0)
    assert granted.break_glass_until == clock.now + 600.0
    assert access.active_count() == 1
    assert registry.get_sample_value("qlink_break_glass_active") == 1.0
    assert access.status_json()["break_glass"] == [
        {
            "user": user.id,
            "name": "alice",
            "until": clock.now + 600.0,
            "reason": "trauma call, records needed",
        }
    ]
    read = access.check_read(granted, MESSAGE, file=0)
    assert read.allow and read.break_glass
    clock.now += 600.0  # expiry is checked on every request: no timer ends it
    assert not access.check_read(granted, MESSAGE).allow
    assert access.active_count() == 0 and access.status_json()["break_glass"] == []
    events = _events(tmp_path)
    glass = [e for e in events if e["event"] == "break_glass"]
    assert (
        len(glass) == 1
        and glass[0]["user"] == user.id
        and glass[0]["reason"] == "trauma call, records needed"
    )
    reads = [e for e in events if e["event"] == "inbox_fetch"]
    assert [(r["decision"], r["break_glass"], r["file"]) for r in reads] == [
        ("allow", True, 0),
        ("deny", False, None),
    ]
    assert [e["event"] for e in events[:1]] == ["user_added"] and events[0]["by"] == "root"
    assert registry.get_sample_value("qlink_break_glass_active") == 0.0
    assert registry.get_sample_value("qlink_break_glass_grants_total") == 1.0
    assert registry.get_sample_value("qlink_access_denied_total") == 2.0  # before the grant, after expiry


@pytest.mark.parametrize(
    ("reason", "seconds", "message"),
    [
        ("", 600.0, "break-glass needs a reason"),
        ("x" * 501, 600.0, "break-glass needs a reason"),
        ("ok", 30.0, "break-glass lasts 1..120 minutes here, not 0.5"),
        ("ok", 7201.0, "break-glass lasts 1..120 minutes here"),
    ],
)
def test_break_glass_refuses_a_missing_reason_or_a_period_out_of_range(
    access: Access, reason: str, seconds: float, message: str, tmp_path: Path
) -> None:
    user, _ = access.add("alice", ("radiology",), by="root")
    with pytest.raises(AccessError, match=message):
        access.break_glass(user, reason, seconds)
    assert not any(e["event"] == "break_glass" for e in _events(tmp_path))
    assert access.store.get(user.id).break_glass_until is None


def test_the_default_period_comes_from_the_configuration(access: Access, clock: Clock) -> None:
    user, _ = access.add("alice", ("radiology",), by="root")
    assert access.break_glass(user, "ok", None).break_glass_until == clock.now + 3600.0


def test_listing_hides_what_the_user_may_not_see_and_audits_the_counts(
    access: Access, tmp_path: Path
) -> None:
    user, _ = access.add("alice", ("radiology",), by="root")
    study = DataAttributes(transfer_id="t-2", kind=TransferKind.STUDY, peer="hospital-a")
    shown, hidden = access.visible(user, [(study, "s"), (MESSAGE, "m")])
    assert (shown, hidden) == (["s"], 1)
    (listed,) = [e for e in _events(tmp_path) if e["event"] == "inbox_list"]
    assert (listed["user"], listed["shown"], listed["hidden"], listed["break_glass"]) == (user.id, 1, 1, 0)
