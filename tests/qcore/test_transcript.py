"""A recorded round (seed, every message in hex, final key hash) replayed byte for byte, each party alone
against the other's recorded messages (STYLE §6: transcript vectors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

from qlinkmed.qcore import messages as m
from qlinkmed.qcore.auth import AuthKeyStore
from qlinkmed.qcore.codec import decode
from qlinkmed.qcore.sim import PRESHARED_KEY_BYTES, _key_hash, make_sessions
from qlinkmed.qcore.toeplitz import toeplitz_hash_reference
from tests.paths import VECTORS
from tests.vectors.transcript_config import VECTOR_CONFIG, config_as_dict

VECTOR = json.loads(VECTORS.joinpath("bb84_transcript.json").read_text())
CROSSINGS = [(c["direction"], bytes.fromhex(c["hex"])) for c in VECTOR["crossings"]]


def test_vector_matches_its_configuration() -> None:
    assert VECTOR["config"] == config_as_dict(VECTOR_CONFIG)


@pytest.mark.parametrize("party", ["alice", "bob"])
def test_each_party_replays_its_messages_byte_for_byte(party: str) -> None:
    alice, bob, _, _ = make_sessions(VECTOR_CONFIG)
    session = alice if party == "alice" else bob
    mine = "alice->bob" if party == "alice" else "bob->alice"
    produced: list[bytes] = [] if party == "alice" else [x.encode() for x in bob.start()]
    for direction, data in CROSSINGS:
        if direction != mine:
            produced += [x.encode() for x in session.receive_bytes(data)]
    expected = [data for direction, data in CROSSINGS if direction == mine]
    assert produced == expected
    assert session.outcome is not None and session.outcome.established
    assert _key_hash(session.outcome.key) == VECTOR["final_key_sha256"]
    assert session.outcome.final_key_bits == VECTOR["final_key_bits"]


def test_final_key_against_the_reference_toeplitz_and_tags_against_plain_poly1305() -> None:
    alice, bob, _, _ = make_sessions(VECTOR_CONFIG)
    for direction, data in CROSSINGS:
        (alice if direction == "bob->alice" else bob).receive_bytes(data)
    raw = alice._raw_key  # the reconciled key both ends hold
    amplify = next(decode(d) for _, d in CROSSINGS if d[0] == m.Amplify.TYPE)
    assert isinstance(amplify, m.Amplify)
    pa = toeplitz_hash_reference(amplify.seed, raw, amplify.length)
    assert alice.outcome is not None
    assert np.array_equal(pa[384:], alice.outcome.key)
    # Each AuthTag is Poly1305(r || pad) over the framed transcript before it.
    psk_rng = np.random.default_rng(np.random.SeedSequence(VECTOR_CONFIG.seed).spawn(4)[3])
    keys = AuthKeyStore(psk_rng.bytes(PRESHARED_KEY_BYTES)).take_round_keys()
    framed: list[bytes] = []
    pads = iter([keys.alice_pad, keys.bob_pad])
    for direction, data in CROSSINGS:
        if data[0] == m.AuthTag.TYPE:
            message = decode(data)
            assert isinstance(message, m.AuthTag)
            tag = message.tag
            assert Poly1305.generate_tag(keys.hash_key + next(pads), b"".join(framed)) == tag
        marker = b"\x00" if direction == "alice->bob" else b"\x01"
        framed.append(marker + len(data).to_bytes(8, "little") + data)
