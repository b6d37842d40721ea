"""The seed paper's image cipher (qcore.image): exact inverse, pinned vectors, qiskit == numpy, the Wu et
al. statistics on a smooth 512x512 test image, and the byte form of a cipher image (container).

The vectors below were recorded from this implementation (float64 numpy, x86-64) and pin it against
drift; the Lorenz right-hand side is checked independently against a scalar transcription of the
equations in docs/references.md §8 (Reiterer et al. 1998).
"""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest

from qlinkmed.qcore.errors import ConfigError, IntegrityError
from qlinkmed.qcore.image import CipherImage, chaos, container, decrypt, encrypt, metrics
from qlinkmed.qcore.image.cipher import bitplane_table
from qlinkmed.qcore.image.neqr import layout_of

KEY = bytes(range(32))
NONCE = bytes(range(16))
HAS_QISKIT = importlib.util.find_spec("qiskit_aer") is not None


def _random_image(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


@pytest.fixture(scope="module")
def smooth512() -> np.ndarray:
    # Gradients, a smooth wave and mild noise: adjacent pixels correlate like a real scan's (~0.99).
    rng = np.random.default_rng(2024)
    y, x = np.mgrid[0:512, 0:512].astype(np.float64)
    img = 128 + 80 * np.sin(x / 60.0) * np.cos(y / 45.0) + 0.06 * (x - 256) + rng.normal(0, 4, (512, 512))
    return np.clip(img, 0, 255).astype(np.uint8)


def _enc(image: np.ndarray, key: bytes, nonce: bytes) -> np.ndarray:
    return encrypt(image, key, nonce).data


# --- exact inverse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((37, 53), np.uint8),
        ((29, 41), np.uint16),
        ((31, 17, 3), np.uint8),
        ((1, 1), np.uint8),
        ((5, 3, 3), np.uint16),
    ],
)
def test_round_trip_is_exact_at_odd_sizes(shape: tuple[int, ...], dtype: type) -> None:
    image = _random_image(shape, dtype, seed=sum(shape))
    cipher = encrypt(image, KEY, NONCE)
    side = cipher.data.shape[0]
    assert cipher.data.shape[:2] == (side, side) and side & (side - 1) == 0 and side >= max(shape[:2])
    assert cipher.data.dtype == dtype
    out = decrypt(cipher, KEY, NONCE)
    assert out.dtype == dtype and out.shape == shape
    assert np.array_equal(out, image)


def test_padding_is_zeros_to_the_next_power_of_two() -> None:
    lay = layout_of(np.zeros((17, 9), dtype=np.uint8))
    assert (lay.n, lay.side, lay.padded_shape) == (5, 32, (32, 32))
    assert layout_of(np.zeros((16, 16, 3), dtype=np.uint16)).padded_shape == (16, 16, 3)


@pytest.mark.parametrize("bits", [8, 16])
def test_bitplane_table_is_a_bijection(bits: int) -> None:
    perm = np.arange(bits)[::-1].copy()
    table = bitplane_table(perm, bits)
    assert np.unique(table).size == 1 << bits
    # plane reversal then b_i ^= b_(i-1): value 1 (plane 0) moves to the top plane and nothing above it.
    assert int(table[1]) == 1 << (bits - 1)


# --- pinned vectors ----------------------------------------------------------------------------------


def test_keystream_vector() -> None:
    stream = chaos.keystream(KEY, bytes(16), b"vector", 32)
    assert stream.tobytes().hex() == "f238b2cad6112ae039459c8aa8afd16715c7a6e0d9b5a4dd3cced945bb293e95"


def test_wide_keystream_vector() -> None:
    # The length of a 512x512 RGB stream: 1024 trajectories, 22 output steps (more than one conversion
    # chunk). Recorded with the textbook RK4 (fresh numpy temporaries) before the in-place integrator
    # replaced it, so it pins that the rewrite changed no bit.
    stream = chaos.keystream(KEY, NONCE, b"ctx", 512 * 512 * 3 + 6252)
    assert hashlib.sha256(stream.tobytes()).hexdigest() == (
        "6398d5bf218f701248720f8e3fec78461405f642df43c0a7eb89998e7646bb4c"
    )


def test_rk4_step_does_not_touch_its_input_and_checks_the_shape() -> None:
    state = chaos.initial_conditions(KEY, NONCE, b"x", 4)
    before = state.copy()
    after = chaos.rk4_step(state)
    assert np.array_equal(state, before) and not np.array_equal(after, before)
    with pytest.raises(ConfigError):
        chaos.rk4_step(np.zeros((8, 4)))


def test_cipher_vectors_8_and_16_bit() -> None:
    img8 = ((np.arange(12 * 10) * 37) % 256).astype(np.uint8).reshape(12, 10)
    c8 = encrypt(img8, KEY, NONCE)
    assert hashlib.sha256(c8.data.tobytes()).hexdigest() == (
        "7ebe80dba76f096b5546c1fa3507bc7c2050d4f9c82561661312e2b9dc1bef32"
    )
    assert c8.tag.hex() == "a1b416be4c2b9472be784410cd422235d2ca922bacccec4680eac96dee911b2a"
    img16 = ((np.arange(5 * 7) * 4099) % 65536).astype(np.uint16).reshape(5, 7)
    c16 = encrypt(img16, KEY, NONCE)
    assert hashlib.sha256(c16.data.astype("<u2").tobytes()).hexdigest() == (
        "9a0bb5c74c8c88d6fcec71671283f282dc1751fd394f66ab77044ec35984a81b"
    )


def _reference_rhs(c: list[float], s: float, r: float, a: float) -> list[float]:
    # docs/references.md §8, transcribed term by term.
    a2 = a * a
    b1, b2 = 4 * (1 + a2) / (1 + 2 * a2), (1 + 2 * a2) / (2 * (1 + a2))
    b3, b4 = 2 * (1 - a2) / (1 + a2), a2 / (1 + a2)
    b5, b6 = 8 * a2 / (1 + 2 * a2), 4 / (1 + 2 * a2)
    c1, c2, c3, c4, c5, c6, c7, c8, c9 = c
    return [
        -s * b1 * c1 - c2 * c4 + b4 * c4**2 + b3 * c3 * c5 - s * b2 * c7,
        -s * c2 + c1 * c4 - c2 * c5 + c4 * c5 - s * c9 / 2,
        -s * b1 * c3 + c2 * c4 - b4 * c2**2 - b3 * c1 * c5 + s * b2 * c8,
        -s * c4 - c2 * c3 - c2 * c5 + c4 * c5 + s * c9 / 2,
        -s * b5 * c5 + c2**2 / 2 - c4**2 / 2,
        -b6 * c6 + c2 * c9 - c4 * c9,
        -b1 * c7 - r * c1 + 2 * c5 * c8 - c4 * c9,
        -b1 * c8 + r * c3 - 2 * c5 * c7 + c2 * c9,
        -c9 - r * c2 + r * c4 - 2 * c2 * c6 + 2 * c4 * c6 + c4 * c7 - c2 * c8,
    ]


def test_vectorised_rk4_matches_a_scalar_transcription_of_the_equations() -> None:
    p = chaos.DEFAULT_PARAMS
    state = chaos.initial_conditions(KEY, NONCE, b"check", 3) * 5.0
    ref = [list(map(float, state[:, j])) for j in range(3)]
    for _ in range(200):
        state = chaos.rk4_step(state, p)
        for j in range(3):
            y = ref[j]
            k1 = _reference_rhs(y, p.sigma, p.r, p.a)
            k2 = _reference_rhs([v + p.h / 2 * k for v, k in zip(y, k1, strict=True)], p.sigma, p.r, p.a)
            k3 = _reference_rhs([v + p.h / 2 * k for v, k in zip(y, k2, strict=True)], p.sigma, p.r, p.a)
            k4 = _reference_rhs([v + p.h * k for v, k in zip(y, k3, strict=True)], p.sigma, p.r, p.a)
            ref[j] = [
                v + p.h / 6 * (a + 2 * b + 2 * c + d) for v, a, b, c, d in zip(y, k1, k2, k3, k4, strict=True)
            ]
    # Different rounding order, same equations: agreement to ~1e-9 after 200 steps (chaos amplifies slowly).
    assert np.allclose(state, np.array(ref).T, rtol=0, atol=1e-9)
    assert np.abs(state).max() > 0.5  # the orbit moved


def test_keystream_is_deterministic_and_key_dependent() -> None:
    a = chaos.keystream(KEY, NONCE, b"", 5000)
    assert np.array_equal(a, chaos.keystream(KEY, NONCE, b"", 5000))
    b = chaos.keystream(metrics.flip_key_bit(KEY, 255), NONCE, b"", 5000)
    assert np.count_nonzero(a != b) > 0.98 * a.size


# --- integrity and misuse ----------------------------------------------------------------------------


def test_tampering_wrong_key_and_wrong_nonce_raise_integrity_error() -> None:
    image = _random_image((5, 3), np.uint8, 5)
    cipher = encrypt(image, KEY, NONCE)
    data = cipher.data.copy()
    data[1, 2] ^= 1
    tampered = CipherImage(data=data, shape=cipher.shape, dtype=cipher.dtype, tag=cipher.tag)
    cases = [(tampered, KEY, NONCE), (cipher, metrics.flip_key_bit(KEY), NONCE), (cipher, KEY, bytes(16))]
    # Every cipher pixel, padding included, is covered: flip each in turn on a small image.
    for y in range(cipher.data.shape[0]):
        for x in range(cipher.data.shape[1]):
            flipped = cipher.data.copy()
            flipped[y, x] ^= 0x80
            cases.append(
                (
                    CipherImage(data=flipped, shape=cipher.shape, dtype=cipher.dtype, tag=cipher.tag),
                    KEY,
                    NONCE,
                )
            )
    for c, k, n in cases:
        with pytest.raises(IntegrityError):
            decrypt(c, k, n)


def test_bad_inputs_are_config_errors() -> None:
    good = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ConfigError):
        encrypt(good, b"short", NONCE)
    with pytest.raises(ConfigError):
        encrypt(good, KEY, b"short")
    with pytest.raises(ConfigError):
        encrypt(good.astype(np.int32), KEY, NONCE)
    with pytest.raises(ConfigError):
        encrypt(np.zeros((4, 4, 4), dtype=np.uint8), KEY, NONCE)
    cipher = encrypt(good, KEY, NONCE)
    with pytest.raises(ConfigError):
        decrypt(CipherImage(data=cipher.data[:2], shape=(4, 4), dtype="uint8", tag=cipher.tag), KEY, NONCE)


def test_repr_hides_pixels_and_tag() -> None:
    cipher = encrypt(np.zeros((3, 3), dtype=np.uint8), KEY, NONCE)
    assert repr(cipher) == "CipherImage(shape=(3, 3), dtype='uint8', version=1)"


# --- Wu et al. and friends on 512x512 ----------------------------------------------------------------


def test_wu_critical_values_match_the_published_table() -> None:
    assert round(metrics.npcr_critical(256 * 256), 4) == 99.5693
    assert round(metrics.npcr_critical(512 * 512), 4) == 99.5893
    assert tuple(round(v, 4) for v in metrics.uaci_interval(256 * 256)) == (33.2824, 33.6447)
    assert tuple(round(v, 4) for v in metrics.uaci_interval(512 * 512)) == (33.3730, 33.5541)


def test_entropy_and_correlation_critical_values() -> None:
    # G-test: 8 - 293.25 / (2 N ln 2); zero-correlation test: 1.95996 / sqrt(pairs).
    assert round(metrics.entropy_critical(512 * 512), 5) == 7.99919
    assert round(metrics.entropy_critical(256 * 256), 5) == 7.99677
    assert round(metrics.correlation_critical(512 * 511), 5) == 0.00383
    assert round(metrics.correlation_critical(100), 4) == 0.1960


def test_uniform_noise_passes_the_entropy_and_correlation_tests_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(8)
    entropy_fail = corr_fail = 0
    trials = 200
    for _ in range(trials):
        noise = rng.integers(0, 256, (128, 128), dtype=np.uint8)
        entropy_fail += metrics.entropy(noise) <= metrics.entropy_critical(noise.size)
        corr_fail += abs(metrics.correlations(noise)["horizontal"]) >= metrics.correlation_critical(128 * 127)
    # Binomial(200, 0.05): mean 10, so 1..22 holds with probability > 0.999.
    assert 1 <= entropy_fail <= 22 and 1 <= corr_fail <= 22, (entropy_fail, corr_fail)


def test_correlations_are_nan_where_undefined() -> None:
    assert all(np.isnan(v) for v in metrics.correlations(np.full((5, 5), 9, dtype=np.uint8)).values())
    row = metrics.correlations(np.arange(6, dtype=np.uint8).reshape(1, 6))
    assert row["horizontal"] == pytest.approx(1.0) and np.isnan(row["vertical"])


def test_the_test_image_is_smooth(smooth512: np.ndarray) -> None:
    assert min(metrics.correlations(smooth512).values()) > 0.95
    assert metrics.entropy(smooth512) < 7.5


def test_cipher_statistics_on_512(smooth512: np.ndarray) -> None:
    cipher = _enc(smooth512, KEY, NONCE)
    assert metrics.entropy(cipher) >= 7.999
    assert metrics.chi_square(cipher) < metrics.CHI2_CRITICAL_255
    assert all(abs(r) < 0.01 for r in metrics.correlations(cipher).values())


def test_key_sensitivity_passes_wu(smooth512: np.ndarray) -> None:
    result = metrics.key_sensitivity(smooth512, KEY, NONCE, _enc)
    assert result.npcr_pass and result.uaci_pass, result


def test_plaintext_sensitivity_passes_wu_under_the_same_key_and_nonce(smooth512: np.ndarray) -> None:
    result = metrics.plaintext_sensitivity(smooth512, KEY, NONCE, _enc)
    assert result.npcr_pass and result.uaci_pass, result


def test_nonce_change_gives_an_unrelated_cipher(smooth512: np.ndarray) -> None:
    a = _enc(smooth512, KEY, NONCE)
    b = _enc(smooth512, KEY, bytes(16))
    assert metrics.npcr(a, b) > 99.5
    assert abs(float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])) < 0.01


def test_metrics_reject_non_8_bit() -> None:
    with pytest.raises(ConfigError):
        metrics.entropy(np.zeros((4, 4), dtype=np.uint16))


# --- container ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype"), [((12, 10), np.uint8), ((5, 7), np.uint16), ((6, 3, 3), np.uint8)]
)
def test_container_round_trip(shape: tuple[int, ...], dtype: type) -> None:
    image = _random_image(shape, dtype, seed=3)
    cipher = encrypt(image, KEY, NONCE)
    blob = container.pack(cipher, NONCE)
    assert blob.startswith(container.MAGIC)
    back, nonce = container.unpack(blob)
    assert nonce == NONCE
    assert (back.shape, back.dtype, back.tag, back.version) == (cipher.shape, cipher.dtype, cipher.tag, 1)
    assert back.data.dtype == dtype and np.array_equal(back.data, cipher.data)
    assert np.array_equal(decrypt(back, KEY, nonce), image)


def test_container_pixels_are_little_endian() -> None:
    cipher = encrypt(np.array([[1, 2]], dtype=np.uint16), KEY, NONCE)
    blob = container.pack(cipher, NONCE)
    assert blob.endswith(cipher.data.astype("<u2").tobytes())


def test_container_refuses_every_truncation() -> None:
    blob = container.pack(encrypt(_random_image((4, 3), np.uint8, 1), KEY, NONCE), NONCE)
    for keep in range(len(blob)):
        with pytest.raises(ConfigError):
            container.unpack(blob[:keep])


def test_container_refuses_trailing_bytes_bad_magic_and_version() -> None:
    blob = container.pack(encrypt(_random_image((4, 3), np.uint8, 1), KEY, NONCE), NONCE)
    for bad, words in [
        (blob + b"\x00", "pixel data"),
        (b"QIMH" + blob[4:], "bad magic"),
        (blob[:4] + b"\x02" + blob[5:], "version"),
    ]:
        with pytest.raises(ConfigError, match=words):
            container.unpack(bad)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (b"{not json", "malformed header"),
        (b'{"shape":[4,3],"dtype":"uint8","nonce":"zz","tag":"00"}', "malformed header"),
        (b'{"shape":[4,3],"dtype":"uint8","nonce":"00"}', "malformed header"),
        (b"[1,2]", "malformed header"),
        (b'{"shape":[4,3],"dtype":"float32","nonce":"00","tag":"00"}', "dtype must be"),
        (b'{"shape":[4,3],"dtype":"uint8","nonce":"00","tag":"00"}', "32 bytes"),
    ],
)
def test_container_refuses_malformed_headers(header: bytes, words: str) -> None:
    # 16 pixel bytes: the right length for a 4x3 uint8 image (padded to 4x4), so only the header is wrong.
    blob = container.MAGIC + bytes([1]) + len(header).to_bytes(2, "big") + header + bytes(16)
    with pytest.raises(ConfigError, match=words):
        container.unpack(blob)


def test_container_with_a_changed_nonce_or_tag_does_not_decrypt() -> None:
    image = _random_image((6, 6), np.uint8, 2)
    cipher = encrypt(image, KEY, NONCE)
    blob = container.pack(cipher, NONCE)
    for field in (b'"nonce":"', b'"tag":"'):
        at = blob.index(field) + len(field)
        changed = blob[:at] + (b"1" if blob[at : at + 1] == b"0" else b"0") + blob[at + 1 :]
        back, nonce = container.unpack(changed)
        with pytest.raises(IntegrityError):
            decrypt(back, KEY, nonce)


# --- qiskit circuit path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((4, 4), np.uint8), ((8, 8), np.uint8), ((3, 5), np.uint8), ((2, 3), np.uint16), ((2, 2, 3), np.uint8)],
)
@pytest.mark.qiskit
@pytest.mark.skipif(not HAS_QISKIT, reason="qiskit-aer not installed")
def test_qiskit_circuit_equals_numpy(shape: tuple[int, ...], dtype: type) -> None:
    from qlinkmed.qcore.image.circuit import encrypt_circuit

    image = _random_image(shape, dtype, seed=11)
    quantum = encrypt_circuit(image, KEY, NONCE)
    classical = encrypt(image, KEY, NONCE)
    assert quantum.tag == classical.tag
    assert np.array_equal(quantum.data, classical.data)
    assert np.array_equal(decrypt(quantum, KEY, NONCE), image)


@pytest.mark.qiskit
@pytest.mark.skipif(not HAS_QISKIT, reason="qiskit-aer not installed")
def test_circuit_path_refuses_large_images() -> None:
    from qlinkmed.qcore.image.circuit import encrypt_circuit

    with pytest.raises(ConfigError):
        encrypt_circuit(np.zeros((17, 3), dtype=np.uint8), KEY, NONCE)
