"""The quantum one-time pad (seed paper 003's QOTPE): the numpy and circuit paths give the same cipher
bits, decryption undoes encryption, and averaged over every key any state of a few qubits is I/2^n."""

from __future__ import annotations

import numpy as np
import pytest

from qlinkmed.qcore.errors import UsageError
from qlinkmed.qcore.qotp import (
    QotpKey,
    circuit_encrypt,
    decrypt,
    encrypt,
    key_averaged_state,
    pad_unitary,
)


def _random_key(rng: np.random.Generator, size: int) -> QotpKey:
    # Test data from a seeded generator; the daemon's keys come from the key pool.
    return QotpKey(rng.bytes(size), rng.bytes(size))


@pytest.mark.parametrize("size", [1, 3, 128])
def test_numpy_and_circuit_paths_give_identical_cipher_bits(size: int) -> None:
    rng = np.random.default_rng(1000 + size)
    for _ in range(4):
        data, key = rng.bytes(size), _random_key(rng, size)
        cipher = encrypt(data, key)
        assert circuit_encrypt(data, key) == cipher
        assert decrypt(cipher, key) == data


def test_the_measured_cipher_is_data_xor_alpha_whatever_beta_is() -> None:
    # What the docs say plainly: on basis-encoded data Z^beta is a phase, invisible to measurement.
    rng = np.random.default_rng(7)
    data, alpha = rng.bytes(3), rng.bytes(3)
    ciphers = {circuit_encrypt(data, QotpKey(alpha, rng.bytes(3))) for _ in range(4)}
    assert ciphers == {bytes(a ^ d for a, d in zip(alpha, data, strict=True))}


def test_a_wrong_key_does_not_decrypt_and_lengths_must_match() -> None:
    rng = np.random.default_rng(3)
    data = rng.bytes(64)
    key, other = _random_key(rng, 64), _random_key(rng, 64)
    assert decrypt(encrypt(data, key), other) != data
    with pytest.raises(UsageError, match="pads 64 bytes, the data has 65"):
        encrypt(data + b"x", key)
    with pytest.raises(UsageError, match="even length"):
        QotpKey.from_material(b"abc")
    assert QotpKey.from_material(b"ab") == QotpKey(b"a", b"b")


def _random_density(rng: np.random.Generator, n: int, rank: int) -> np.ndarray:
    dim = 1 << n
    vectors = rng.normal(size=(dim, rank)) + 1j * rng.normal(size=(dim, rank))
    rho = vectors @ vectors.conj().T
    return rho / np.trace(rho)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_averaged_over_every_key_any_state_is_maximally_mixed(n: int) -> None:
    rng = np.random.default_rng(n)
    bell = np.zeros(1 << n, dtype=complex)
    bell[0] = bell[-1] = 1 / np.sqrt(2)
    states = [np.outer(bell, bell.conj()), _random_density(rng, n, 1), _random_density(rng, n, 1 << n)]
    for rho in states:
        averaged = key_averaged_state(rho)
        np.testing.assert_allclose(averaged, np.eye(1 << n) / (1 << n), atol=1e-12)
        # One key alone leaves a pure state pure: the secrecy is in not knowing which key.
        u = pad_unitary(rng.integers(0, 2, n), rng.integers(0, 2, n))
        once = u @ rho @ u.conj().T
        assert np.trace(once @ once).real == pytest.approx(np.trace(rho @ rho).real, abs=1e-12)
    pure = states[1]
    assert np.trace(pure @ pure).real == pytest.approx(1.0)
    assert np.trace(key_averaged_state(pure) @ key_averaged_state(pure)).real == pytest.approx(1 / (1 << n))


def test_pad_unitary_applies_z_before_x_on_each_qubit() -> None:
    x = np.array([[0, 1], [1, 0]])
    z = np.array([[1, 0], [0, -1]])
    np.testing.assert_allclose(pad_unitary(np.array([1]), np.array([1])), x @ z)
    np.testing.assert_allclose(pad_unitary(np.array([1, 0]), np.array([0, 1])), np.kron(x, z))


def test_the_circuit_path_refuses_a_payload_wider_than_it_simulates() -> None:
    with pytest.raises(UsageError, match="at most 1024 bits, not 1032"):
        circuit_encrypt(bytes(129), QotpKey(bytes(129), bytes(129)))
