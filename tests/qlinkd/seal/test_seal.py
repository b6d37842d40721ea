"""The sealing layer (qlinkd/seal): AEAD frames, counters accepted strictly in order, rekey limits, one-time
pad and the ML-KEM hybrid. Pure code: no sockets, no clock."""

from __future__ import annotations

import ast
import uuid

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qlinkmed.qcore.errors import IntegrityFailure, QlinkError
from qlinkmed.qlinkd.errors import (
    HybridUnavailable,
    IntegrityError,
    KeyMaterialShort,
    RekeyRequired,
)
from qlinkmed.qlinkd.seal import (
    Direction,
    KeyStatus,
    Opener,
    Sealer,
    SendState,
    derive_traffic_key,
    hybrid,
    peek_key_ids,
)
from qlinkmed.qlinkd.seal import constants as consts
from qlinkmed.qlinkd.seal.otp import (
    open_otp,
    open_otp_range,
    otp_key_bytes,
    otp_material_needed,
    peek_otp_key_ids,
    peek_otp_range,
    seal_otp,
    seal_otp_range,
)
from tests.paths import REPO

SEED = 20240604
KEY_ID = uuid.UUID("6f1c2a9e-0d3b-4c5a-8e7f-112233445566")
KEY_ID_2 = uuid.UUID("0a0b0c0d-0e0f-4011-8213-141516171819")
HEADER_LEN = 1 + 1 + 16 + 8


def _material(seed: int = SEED, size: int = 32) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def _key(direction: Direction = Direction.MASTER_TO_SLAVE, **kw):
    return derive_traffic_key(
        kw.get("material", _material()), kw.get("key_ids", [KEY_ID]), direction=direction
    )


def _pair(started_at: float = 0.0):
    key = _key()
    sealer = Sealer(key, state=SendState(next_counter=0, bytes_sealed=0, started_at=started_at))
    return sealer, Opener(key, started_at=started_at)


def _counter(frame: bytes) -> int:
    return int.from_bytes(frame[HEADER_LEN - 8 : HEADER_LEN], "big")


# --- key derivation ---------------------------------------------------------------------------------


def test_derivation_is_deterministic_and_bound_to_every_input() -> None:
    base = _key()
    assert base.key == _key().key
    assert len(base.key) == 32
    others = [
        _key(Direction.SLAVE_TO_MASTER),
        _key(material=_material(SEED + 1)),
        _key(key_ids=[KEY_ID_2]),
        _key(key_ids=[KEY_ID, KEY_ID_2]),
    ]
    keys = {base.key, *(k.key for k in others)}
    assert len(keys) == 5


def test_derivation_refuses_short_material_and_bad_key_ids() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        derive_traffic_key(b"\x01" * 31, [KEY_ID], direction=Direction.MASTER_TO_SLAVE)
    with pytest.raises(ValueError):
        derive_traffic_key(_material(), ["not-a-uuid"], direction=Direction.MASTER_TO_SLAVE)
    with pytest.raises(ValueError, match="1 to 255"):
        derive_traffic_key(_material(), [], direction=Direction.MASTER_TO_SLAVE)


def test_keys_are_hidden_in_repr() -> None:
    sealer, opener = _pair()
    key = _key()
    for text in (repr(key), str(key), repr(sealer), repr(opener)):
        assert "(hidden)" in text
        assert key.key.hex() not in text
        assert repr(key.key) not in text


# --- AEAD frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1024, 65_537, consts.MAX_PLAINTEXT_BYTES])
def test_round_trip(size: int) -> None:
    sealer, opener = _pair()
    message = np.random.default_rng(size).bytes(size)
    frame = sealer.seal(message, now=1.0)
    assert len(frame) == HEADER_LEN + size + consts.TAG_BYTES
    assert frame[0] == consts.AEAD_VERSION
    assert peek_key_ids(frame) == (KEY_ID,)
    assert opener.open(frame, now=1.0) == message


def test_frame_layout_opens_with_plain_aesgcm() -> None:
    # An independent reading of the documented layout: nonce = 4 zero bytes || counter, AAD = header.
    sealer, _ = _pair()
    sealer.seal(b"first", now=0.0)
    frame = sealer.seal(b"second frame", now=0.0)
    assert frame[1] == 1 and frame[2:18] == KEY_ID.bytes
    assert _counter(frame) == 1
    nonce = b"\x00" * 4 + frame[18:26]
    assert AESGCM(_key().key).decrypt(nonce, frame[HEADER_LEN:], frame[:HEADER_LEN]) == b"second frame"


def test_plaintext_over_the_limit_is_refused_locally() -> None:
    sealer, _ = _pair()
    with pytest.raises(ValueError, match="frame limit"):
        sealer.seal(bytes(consts.MAX_PLAINTEXT_BYTES + 1), now=0.0)
    assert sealer.next_counter == 0


def test_every_single_bit_flip_is_rejected_and_leaves_the_counter_alone() -> None:
    sealer, opener = _pair()
    frame = sealer.seal(b"HL7 ORU^R01 result, 32 bytes...!", now=0.0)
    reasons = set()
    for bit in range(8 * len(frame)):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError) as info:
            opener.open(bytes(tampered), now=0.0)
        reasons.add(info.value.reason)
    # A flipped high counter bit is refused as past the message limit, before the tag.
    allowed = {
        IntegrityFailure.VERSION,
        IntegrityFailure.KEY_MISMATCH,
        IntegrityFailure.TAG,
        IntegrityFailure.KEY_EXPIRED,
    }
    assert reasons <= allowed
    assert IntegrityFailure.TAG in reasons
    # No forgery moved the expected counter: the genuine frame still opens.
    assert opener.open(frame, now=0.0) == b"HL7 ORU^R01 result, 32 bytes...!"


def test_truncated_and_extended_frames_are_rejected() -> None:
    sealer, opener = _pair()
    frame = sealer.seal(b"x" * 40, now=0.0)
    for cut in range(len(frame)):
        with pytest.raises(IntegrityError):
            opener.open(frame[:cut], now=0.0)
    with pytest.raises(IntegrityError) as info:
        opener.open(frame + b"\x00", now=0.0)
    assert info.value.reason is IntegrityFailure.TAG
    with pytest.raises(IntegrityError) as info:
        opener.open(frame[:10], now=0.0)
    assert info.value.reason is IntegrityFailure.TRUNCATED
    assert opener.open(frame, now=0.0) == b"x" * 40


def test_wrong_version_byte_is_rejected() -> None:
    sealer, opener = _pair()
    frame = sealer.seal(b"payload", now=0.0)
    for version in range(256):
        if version == consts.AEAD_VERSION:
            continue
        with pytest.raises(IntegrityError) as info:
            opener.open(bytes([version]) + frame[1:], now=0.0)
        assert info.value.reason is IntegrityFailure.VERSION
    with pytest.raises(IntegrityError):
        peek_key_ids(bytes([consts.OTP_VERSION]) + frame[1:])


def test_frame_of_another_key_or_direction_is_rejected() -> None:
    other_ids = Sealer(
        _key(key_ids=[KEY_ID_2]),
        state=SendState(next_counter=0, bytes_sealed=0, started_at=0.0),
    )
    reverse = Sealer(
        _key(Direction.SLAVE_TO_MASTER),
        state=SendState(next_counter=0, bytes_sealed=0, started_at=0.0),
    )
    _, opener = _pair()
    with pytest.raises(IntegrityError) as info:
        opener.open(other_ids.seal(b"m", now=0.0), now=0.0)
    assert info.value.reason is IntegrityFailure.KEY_MISMATCH
    with pytest.raises(IntegrityError) as info:
        opener.open(reverse.seal(b"m", now=0.0), now=0.0)
    assert info.value.reason is IntegrityFailure.TAG


def test_integrity_error_is_a_qlink_error() -> None:
    assert issubclass(IntegrityError, QlinkError)


# --- replay and order -------------------------------------------------------------------------------


def test_replayed_frame_is_rejected() -> None:
    sealer, opener = _pair()
    frame = sealer.seal(b"once", now=0.0)
    assert opener.open(frame, now=0.0) == b"once"
    with pytest.raises(IntegrityError) as info:
        opener.open(frame, now=0.0)
    assert info.value.reason is IntegrityFailure.REPLAY


def test_a_frame_ahead_of_the_next_is_rejected_and_moves_nothing() -> None:
    sealer, opener = _pair()
    frames = [sealer.seal(i.to_bytes(4, "big"), now=0.0) for i in range(4)]
    assert opener.open(frames[0], now=0.0) == (0).to_bytes(4, "big")
    for ahead in (frames[2], frames[3]):
        with pytest.raises(IntegrityError) as info:
            opener.open(ahead, now=0.0)
        assert info.value.reason is IntegrityFailure.REORDERED
    # Neither gap moved the expected counter: the stream goes on from frame 1, and an old frame is a replay.
    assert [opener.open(f, now=0.0) for f in frames[1:]] == [i.to_bytes(4, "big") for i in range(1, 4)]
    with pytest.raises(IntegrityError) as info:
        opener.open(frames[1], now=0.0)
    assert info.value.reason is IntegrityFailure.REPLAY


def test_forged_frame_far_ahead_does_not_move_the_expected_counter() -> None:
    key = _key()
    late = Sealer(key, state=SendState(next_counter=80_000, bytes_sealed=0, started_at=0.0))
    forged = bytearray(late.seal(b"forged", now=0.0))
    forged[-1] ^= 0x80
    sealer, opener = _pair()
    frame0 = sealer.seal(b"zero", now=0.0)
    with pytest.raises(IntegrityError):
        opener.open(bytes(forged), now=0.0)
    assert opener.open(frame0, now=0.0) == b"zero"


# --- rekey limits -----------------------------------------------------------------------------------


def test_rekey_by_time() -> None:
    sealer, opener = _pair(started_at=1000.0)
    assert sealer.status(1000.0 + consts.REKEY_AFTER_SECONDS - 0.001) is KeyStatus.FRESH
    assert sealer.status(1000.0 + consts.REKEY_AFTER_SECONDS) is KeyStatus.REKEY_DUE
    frame = sealer.seal(b"still allowed", now=1000.0 + consts.REJECT_AFTER_SECONDS - 0.001)
    assert sealer.status(1000.0 + consts.REJECT_AFTER_SECONDS) is KeyStatus.EXPIRED
    with pytest.raises(RekeyRequired) as info:
        sealer.seal(b"too late", now=1000.0 + consts.REJECT_AFTER_SECONDS)
    assert info.value.limit == "age"
    with pytest.raises(IntegrityError) as failure:
        opener.open(frame, now=1000.0 + consts.REJECT_AFTER_SECONDS)
    assert failure.value.reason is IntegrityFailure.KEY_EXPIRED
    assert opener.open(frame, now=1000.0 + consts.REJECT_AFTER_SECONDS - 0.001) == b"still allowed"


def test_rekey_by_messages() -> None:
    key = _key()
    soft = consts.REKEY_AFTER_MESSAGES
    sealer = Sealer(key, state=SendState(next_counter=soft - 1, bytes_sealed=0, started_at=0.0))
    assert sealer.status(0.0) is KeyStatus.FRESH
    sealer.seal(b"m", now=0.0)
    assert sealer.status(0.0) is KeyStatus.REKEY_DUE
    hard = consts.REJECT_AFTER_MESSAGES
    sealer = Sealer(key, state=SendState(next_counter=hard - 1, bytes_sealed=0, started_at=0.0))
    last = sealer.seal(b"last", now=0.0)
    with pytest.raises(RekeyRequired) as info:
        sealer.seal(b"one too many", now=0.0)
    assert info.value.limit == "messages"
    # An opener takes counters in order from 0, so it cannot open the last frame here; what it can show is
    # the limit's edge: the last counter passes the limit and the tag (only then is order judged), the
    # first past it is refused before the tag (a frame made with plain AES-GCM, as the sealer would).
    with pytest.raises(IntegrityError) as failure:
        Opener(key, started_at=0.0).open(last, now=0.0)
    assert failure.value.reason is IntegrityFailure.REORDERED
    header = last[: HEADER_LEN - 8] + hard.to_bytes(8, "big")
    past = header + AESGCM(key.key).encrypt(b"\x00" * 4 + header[-8:], b"past", header)
    with pytest.raises(IntegrityError) as failure:
        Opener(key, started_at=0.0).open(past, now=0.0)
    assert failure.value.reason is IntegrityFailure.KEY_EXPIRED


def test_rekey_by_bytes() -> None:
    key = _key()
    soft, hard = consts.REKEY_AFTER_BYTES, consts.REJECT_AFTER_BYTES
    sealer = Sealer(key, state=SendState(next_counter=0, bytes_sealed=soft - 4, started_at=0.0))
    sealer.seal(b"abc", now=0.0)
    assert sealer.status(0.0) is KeyStatus.FRESH
    sealer.seal(b"d", now=0.0)
    assert sealer.status(0.0) is KeyStatus.REKEY_DUE
    sealer = Sealer(key, state=SendState(next_counter=0, bytes_sealed=hard - 4, started_at=0.0))
    with pytest.raises(RekeyRequired) as info:
        sealer.seal(b"12345", now=0.0)
    assert info.value.limit == "bytes"
    assert sealer.next_counter == 0  # a refused seal uses no counter
    sealer.seal(b"1234", now=0.0)
    assert sealer.status(0.0) is KeyStatus.EXPIRED


def test_limits_follow_the_reference() -> None:
    assert int(2**24.5) == consts.REJECT_AFTER_MESSAGES
    assert consts.REJECT_AFTER_BYTES <= 2**38.5
    assert consts.REKEY_AFTER_SECONDS == 120.0 and consts.REJECT_AFTER_SECONDS == 180.0
    assert consts.REJECT_AFTER_MESSAGES < 2**64


# --- one-time pad -----------------------------------------------------------------------------------


def test_otp_round_trip_consumes_exactly_message_plus_tag_key() -> None:
    message = b'{"resourceType": "Observation", "status": "final"}'
    material = _material(size=otp_key_bytes(len(message)) + 100)
    sealed = seal_otp(message, material, [KEY_ID, KEY_ID_2])
    assert sealed.consumed_bytes == len(message) + consts.OTP_TAG_KEY_BYTES
    assert sealed.consumed_bits == 8 * len(message) + 256
    assert len(sealed.frame) == 2 + 32 + len(message) + consts.TAG_BYTES
    assert peek_otp_key_ids(sealed.frame) == (KEY_ID, KEY_ID_2)
    assert otp_material_needed(sealed.frame) == sealed.consumed_bytes
    assert open_otp(sealed.frame, material) == message
    # Bytes past the consumed prefix play no part; every byte inside it does.
    tail_changed = material[: sealed.consumed_bytes] + bytes(100)
    assert seal_otp(message, tail_changed, [KEY_ID, KEY_ID_2]).frame == sealed.frame
    for index in range(sealed.consumed_bytes):
        changed = bytearray(material)
        # 0x04 survives Poly1305's clamping of r (which ignores 22 of r's 128 bits).
        changed[index] ^= 0x04
        assert seal_otp(message, bytes(changed), [KEY_ID, KEY_ID_2]).frame != sealed.frame


def test_otp_refuses_short_key_material() -> None:
    message = b"x" * 1024
    with pytest.raises(KeyMaterialShort) as info:
        seal_otp(message, _material(size=otp_key_bytes(1024) - 1), [KEY_ID])
    assert info.value.needed_bits == 8 * (1024 + 32)
    assert info.value.provided_bits == 8 * (1024 + 31)
    sealed = seal_otp(message, _material(size=otp_key_bytes(1024)), [KEY_ID])
    with pytest.raises(KeyMaterialShort):
        open_otp(sealed.frame, _material(size=otp_key_bytes(1024) - 1))


def test_otp_every_bit_flip_and_forged_tags_fail() -> None:
    message = b"MSH|^~\\&|RIS|A|EHR|B|202406041200||ORU^R01|1|P|2.5"
    material = _material(size=otp_key_bytes(len(message)))
    frame = seal_otp(message, material, [KEY_ID]).frame
    for bit in range(8 * len(frame)):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError):
            open_otp(bytes(tampered), material)
    # Without the tag key an attacker can only guess tags, for the real text or a chosen one.
    rng = np.random.default_rng(SEED)
    chosen = frame[: -16 - len(message)] + bytes(
        a ^ b for a, b in zip(frame[-16 - len(message) : -16], b"x" * len(message), strict=True)
    )
    for _ in range(200):
        with pytest.raises(IntegrityError) as info:
            open_otp(chosen + rng.bytes(16), material)
        assert info.value.reason is IntegrityFailure.TAG
    with pytest.raises(IntegrityError):
        open_otp(frame, _material(SEED + 1, size=len(material)))
    for cut in range(len(frame) - 16):
        with pytest.raises((IntegrityError, KeyMaterialShort)):
            open_otp(frame[:cut], b"")
    assert open_otp(frame, material) == message


def test_otp_of_an_empty_message_still_carries_a_tag() -> None:
    material = _material(size=otp_key_bytes(0))
    sealed = seal_otp(b"", material, [KEY_ID])
    assert sealed.consumed_bytes == 32
    assert open_otp(sealed.frame, material) == b""


def test_otp_range_frame_cuts_its_pad_at_the_offset_it_names() -> None:
    message = b'{"resourceType": "Patient", "active": true}'
    pad_key = _material(size=4096)
    needed = otp_key_bytes(len(message))
    sealed = seal_otp_range(message, pad_key[100 : 100 + needed], KEY_ID, 100)
    assert sealed.consumed_bytes == needed
    assert len(sealed.frame) == 1 + 16 + consts.OTP_OFFSET_BYTES + len(message) + consts.TAG_BYTES
    where = peek_otp_range(sealed.frame)
    assert (where.key_id, where.offset, where.size) == (KEY_ID, 100, needed)
    assert open_otp_range(sealed.frame, pad_key[where.offset : where.offset + where.size]) == message
    # The same message at another offset is another frame, under other pad bytes.
    other = seal_otp_range(message, pad_key[100 + needed : 100 + 2 * needed], KEY_ID, 100 + needed).frame
    assert other[21:] != sealed.frame[21:]


def test_otp_range_header_is_authenticated_and_every_bit_flip_fails() -> None:
    message = b"MSH|^~\\&|RIS|A|EHR|B|202406041200||ORU^R01|1|P|2.5"
    pad_key = _material(size=1024)
    needed = otp_key_bytes(len(message))
    frame = seal_otp_range(message, pad_key[8 : 8 + needed], KEY_ID, 8).frame
    for bit in range(8 * len(frame)):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        # The pad is cut where the (tampered) header says; an offset flipped past the key leaves too little.
        with pytest.raises((IntegrityError, KeyMaterialShort)):
            claimed = peek_otp_range(bytes(tampered))
            open_otp_range(bytes(tampered), pad_key[claimed.offset : claimed.offset + claimed.size])
    with pytest.raises(IntegrityError) as info:
        peek_otp_range(seal_otp(message, pad_key, [KEY_ID]).frame)
    assert info.value.reason is IntegrityFailure.VERSION
    with pytest.raises(IntegrityError) as info:
        open_otp(frame, pad_key)
    assert info.value.reason is IntegrityFailure.VERSION
    for cut in range(1 + 16 + consts.OTP_OFFSET_BYTES + consts.TAG_BYTES):
        with pytest.raises(IntegrityError):
            peek_otp_range(frame[:cut])
    with pytest.raises(ValueError, match="does not fit"):
        seal_otp_range(message, pad_key, KEY_ID, 1 << 32)


# --- post-quantum hybrid ----------------------------------------------------------------------------

needs_mlkem = pytest.mark.skipif(not hybrid.hybrid_available(), reason="cryptography without ML-KEM-768")


def _exchange(seed: int) -> tuple[hybrid.KemSecret, hybrid.KemSecret, bytes]:
    offer = hybrid.HybridOffer(np.random.default_rng(seed).bytes(hybrid.MLKEM_SEED_BYTES))
    ciphertext, slave_secret = hybrid.respond(offer.public_bytes())
    return offer.finish(ciphertext), slave_secret, ciphertext


@needs_mlkem
def test_hybrid_both_ends_derive_the_same_key() -> None:
    master, slave, _ = _exchange(SEED)
    assert master.secret == slave.secret and len(master.secret) == 32
    kw = {"direction": Direction.MASTER_TO_SLAVE}
    k_master = hybrid.derive_hybrid_traffic_key(_material(), [KEY_ID], kem=master, **kw)
    k_slave = hybrid.derive_hybrid_traffic_key(_material(), [KEY_ID], kem=slave, **kw)
    assert k_master.key == k_slave.key and k_master.hybrid
    sealer = Sealer(k_master, state=SendState(next_counter=0, bytes_sealed=0, started_at=0))
    assert Opener(k_slave, started_at=0.0).open(sealer.seal(b"study", now=0.0), now=0.0) == b"study"


@needs_mlkem
def test_hybrid_key_changes_with_either_input() -> None:
    master, _, ciphertext = _exchange(SEED)
    other_kem, _, _ = _exchange(SEED + 1)
    direction = Direction.MASTER_TO_SLAVE
    base = hybrid.derive_hybrid_traffic_key(_material(), [KEY_ID], kem=master, direction=direction).key
    assert (
        hybrid.derive_hybrid_traffic_key(_material(SEED + 1), [KEY_ID], kem=master, direction=direction).key
        != base
    )
    assert (
        hybrid.derive_hybrid_traffic_key(_material(), [KEY_ID], kem=other_kem, direction=direction).key
        != base
    )
    assert (
        derive_traffic_key(_material(), [KEY_ID], direction=direction).key != base
    )  # hybrid and QKD-only differ
    # A tampered ciphertext decapsulates to another secret (implicit rejection): the keys then differ.
    offer = hybrid.HybridOffer(np.random.default_rng(SEED).bytes(64))
    tampered = bytearray(ciphertext)
    tampered[0] ^= 1
    assert offer.finish(bytes(tampered)).secret != master.secret
    with pytest.raises(ValueError):
        offer.finish(ciphertext[:-1])
    with pytest.raises(ValueError):
        hybrid.respond(b"\x00" * 10)
    assert "(hidden)" in repr(master) and master.secret.hex() not in repr(master)
    assert "(hidden)" in repr(offer)


def test_hybrid_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hybrid, "_mlkem", None)
    assert not hybrid.hybrid_available()
    with pytest.raises(HybridUnavailable, match="ML-KEM-768"):
        hybrid.HybridOffer(bytes(64))
    with pytest.raises(HybridUnavailable):
        hybrid.respond(b"")


# --- purity -----------------------------------------------------------------------------------------


def test_seal_package_does_no_io() -> None:
    forbidden = {"asyncio", "aiohttp", "socket", "ssl", "time", "datetime", "random", "os", "logging"}
    package = REPO / "qlinkd" / "seal"
    offences = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            if isinstance(node, ast.Import | ast.ImportFrom):
                offences += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in forbidden]
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"open", "print"}
            ):
                offences.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
    assert offences == []
