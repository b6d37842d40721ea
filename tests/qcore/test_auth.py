"""Wegman-Carter authentication: the key store never hands out a pad twice, tags verify, forgeries fail."""

from __future__ import annotations

import pytest

from qlinkmed.qcore.auth import (
    ROUND_AUTH_BYTES,
    AuthKeyStore,
    verify_wegman_carter_tag,
    wegman_carter_tag,
)
from qlinkmed.qcore.errors import AuthKeyExhausted, IntegrityError


def test_two_stores_from_one_secret_hand_out_identical_keys_once() -> None:
    secret = bytes(range(256)) * 2
    a, b = AuthKeyStore(secret), AuthKeyStore(secret)
    ka, kb = a.take_round_keys(), b.take_round_keys()
    assert (ka.hash_key, ka.alice_pad, ka.bob_pad) == (kb.hash_key, kb.alice_pad, kb.bob_pad)
    assert a.position == ROUND_AUTH_BYTES
    with pytest.raises(IntegrityError, match="already consumed"):
        a.take_round_keys(offset=0)


def test_skipping_ahead_discards_and_exhaustion_is_reported() -> None:
    store = AuthKeyStore(bytes(3 * ROUND_AUTH_BYTES))
    keys = store.take_round_keys(offset=2 * ROUND_AUTH_BYTES)
    assert keys.offset == 2 * ROUND_AUTH_BYTES
    assert store.available_bits == 0
    with pytest.raises(AuthKeyExhausted):
        store.take_round_keys()
    store.replenish(bytes(ROUND_AUTH_BYTES))
    assert store.take_round_keys().offset == 3 * ROUND_AUTH_BYTES


def test_tag_verifies_and_any_change_fails() -> None:
    store = AuthKeyStore(bytes(range(48)))
    keys = store.take_round_keys()
    data = b"transcript" * 100
    tag = wegman_carter_tag(keys.hash_key, keys.alice_pad, data)
    verify_wegman_carter_tag(keys.hash_key, keys.alice_pad, data, tag)
    with pytest.raises(IntegrityError):
        verify_wegman_carter_tag(keys.hash_key, keys.alice_pad, data[:-1] + b"X", tag)
    with pytest.raises(IntegrityError):
        verify_wegman_carter_tag(keys.hash_key, keys.bob_pad, data, tag)


def test_secrets_stay_out_of_repr() -> None:
    store = AuthKeyStore(b"\xaa" * 48)
    assert "aa" not in repr(store).lower()
    assert "hidden" in repr(store.take_round_keys())
