"""Measurement backends: exact behaviour where quantum mechanics is deterministic, and statistical agreement
between the numpy reference and the qiskit-aer circuits everywhere else.

Every statistical bound is z standard errors, with z chosen so that one comparison fails by chance with
probability FALSE_ALARM (two-sided, normal approximation). The whole file makes fewer than 100 comparisons,
so a correct backend fails it with probability below 1e-4 whatever the seeds.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pytest

from qlinkmed.qcore.backends import BACKEND_NAMES, MeasurementBackend, get_backend
from qlinkmed.qcore.backends.qiskit_backend import FIBER_LABEL, QiskitBackend  # imports no qiskit
from qlinkmed.qcore.channel import ALICE_ANGLES8, BOB_ANGLES8
from qlinkmed.qcore.errors import ConfigError

FALSE_ALARM = 1e-6
Z = NormalDist().inv_cdf(1 - FALSE_ALARM / 2)  # about 4.89

HAS_QISKIT = importlib.util.find_spec("qiskit_aer") is not None
needs_qiskit = [pytest.mark.qiskit, pytest.mark.skipif(not HAS_QISKIT, reason="qiskit-aer not installed")]

BACKENDS = [pytest.param("numpy"), pytest.param("qiskit", marks=needs_qiskit)]
PAIR_BACKENDS = [*BACKENDS, pytest.param("qiskit-deferred", marks=needs_qiskit)]

# CHSH: S = E(0,1) - E(0,3) + E(2,1) + E(2,3), angles in units of pi/8.
CHSH_TERMS = {(0, 1): 1, (0, 3): -1, (2, 1): 1, (2, 3): 1}


@pytest.fixture(scope="module")
def backend_factory() -> Callable[[str], MeasurementBackend]:
    """Build each backend once per module, and a qiskit one only when a selected test asks for it."""
    made: dict[str, MeasurementBackend] = {}

    def make(name: str) -> MeasurementBackend:
        if name not in made:
            if name == "qiskit-deferred":
                made[name] = QiskitBackend(defer_eve_measurement=True)
            else:
                made[name] = get_backend(name)
        return made[name]

    return make


@pytest.fixture
def backend(request, backend_factory):
    return backend_factory(request.param)


@pytest.fixture
def qiskit_backend(backend_factory):
    pytest.importorskip("qiskit_aer")
    return backend_factory("qiskit")


def _bb84_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bits, alice_bases, bob_bases = (rng.integers(0, 2, n, dtype=np.uint8) for _ in range(3))
    return bits, alice_bases, bob_bases


def _binomial_tolerance(n: int, p: float) -> float:
    return Z * math.sqrt(n * p * (1 - p))


def _correlators(a8, b8, alice, bob) -> dict[tuple[int, int], tuple[float, int]]:
    """E(a, b) = P(same) - P(different) and the number of pairs behind it, for every angle pair present."""
    out = {}
    for a in np.unique(a8):
        for b in np.unique(b8):
            sel = (a8 == a) & (b8 == b)
            n = int(sel.sum())
            if n:
                out[int(a), int(b)] = (1.0 - 2.0 * float(np.mean(alice[sel] != bob[sel])), n)
    return out


def _chsh(corr) -> tuple[float, float]:
    """S and Var(S_hat): the four correlators come from disjoint pairs, Var(E_hat) = (1 - E^2) / N."""
    s = sum(sign * corr[key][0] for key, sign in CHSH_TERMS.items())
    var = sum((1 - corr[key][0] ** 2) / corr[key][1] for key in CHSH_TERMS)
    return s, var


# -- package shape ------------------------------------------------------------------------------------------


def test_importing_backends_does_not_import_qiskit():
    code = (
        "import sys, qlinkmed.qcore.backends, qlinkmed.qcore.backends.qiskit_backend\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qiskit', 'qiskit_aer'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_get_backend_names():
    assert BACKEND_NAMES == ("numpy", "qiskit")
    assert get_backend("numpy").name == "numpy"
    with pytest.raises(ConfigError) as info:
        get_backend("cirq")
    assert info.value.field == "backend"


@pytest.mark.qiskit
def test_get_backend_qiskit(qiskit_backend):
    assert qiskit_backend.name == "qiskit"


# -- BB84 photons: exact and fair-coin behaviour, each backend --------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_same_basis_without_flip_returns_the_bit(backend):
    bits, bases, _ = _bb84_inputs(20_000, seed=1)
    out = backend.measure_photons(bits, bases, bases.copy(), 0.0, np.random.default_rng(2))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, bits)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_flip_one_inverts_every_same_basis_outcome(backend):
    # With certain misalignment every linear polarisation turns orthogonal: proof the noise is applied.
    bits, bases, _ = _bb84_inputs(5_000, seed=3)
    out = backend.measure_photons(bits, bases, bases.copy(), 1.0, np.random.default_rng(4))
    np.testing.assert_array_equal(out, 1 - bits)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("flip", [0.0, 0.03])
def test_mismatched_basis_is_a_fair_coin(backend, flip):
    bits, bases, _ = _bb84_inputs(40_000, seed=5)
    out = backend.measure_photons(bits, bases, 1 - bases, flip, np.random.default_rng(6))
    for b in (0, 1):
        for basis in (0, 1):
            sel = (bits == b) & (bases == basis)
            n = int(sel.sum())
            assert abs(int(out[sel].sum()) - n / 2) <= _binomial_tolerance(n, 0.5)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_uneven_groups(backend):
    # Groups of very different sizes (the qiskit backend runs them in several Aer calls, and groups of
    # near-equal size share one call, each keeping a random subset of the shots).
    sizes = {(0, 0, 0): 30_000, (1, 0, 0): 27_000, (0, 1, 1): 3_000, (1, 1, 0): 7, (0, 0, 1): 1}
    bits = np.concatenate([np.full(n, k[0], np.uint8) for k, n in sizes.items()])
    bases = np.concatenate([np.full(n, k[1], np.uint8) for k, n in sizes.items()])
    meas = np.concatenate([np.full(n, k[2], np.uint8) for k, n in sizes.items()])
    perm = np.random.default_rng(7).permutation(bits.size)
    bits, bases, meas = bits[perm], bases[perm], meas[perm]
    flip = 0.05
    out = backend.measure_photons(bits, bases, meas, flip, np.random.default_rng(8))
    assert out.shape == bits.shape
    for (b, basis, m), n in sizes.items():
        sel = (bits == b) & (bases == basis) & (meas == m)
        errors = int((out[sel] != b).sum())
        p = flip if basis == m else 0.5
        assert abs(errors - n * p) <= _binomial_tolerance(n, p) + 1e-9


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_empty_inputs(backend):
    empty = np.zeros(0, np.uint8)
    rng = np.random.default_rng(0)
    assert backend.measure_photons(empty, empty, empty, 0.1, rng).size == 0
    e8 = np.zeros(0, np.int8)
    assert all(x.size == 0 for x in backend.measure_pairs(e8, e8, e8, 0.1, 0.1, rng))


# -- E91 pairs: exact behaviour, each backend -------------------------------------------------------------


@pytest.mark.parametrize("backend", PAIR_BACKENDS, indirect=True)
def test_pairs_exact_without_noise(backend):
    rng = np.random.default_rng(9)
    n = 6_000
    # Equal angles always agree; angles pi/2 apart always disagree.
    a8 = rng.integers(0, 4, n).astype(np.int8)
    b_same = a8.copy()
    b_orth = a8 + 4
    no_eve = np.full(n, -1, np.int8)
    alice, bob, eve = backend.measure_pairs(a8, b_same, no_eve, 0.0, 0.0, np.random.default_rng(10))
    np.testing.assert_array_equal(alice, bob)
    assert not eve.any()
    alice, bob, _ = backend.measure_pairs(a8, b_orth, no_eve, 0.0, 0.0, np.random.default_rng(11))
    np.testing.assert_array_equal(alice, 1 - bob)
    # Eve's measurement is exact where she uses Alice's angle, and her re-prepared photon is exact for
    # Bob at Eve's angle.
    e8 = np.where(rng.random(n) < 0.5, 0, 2).astype(np.int8)
    alice, bob, eve = backend.measure_pairs(e8, e8, e8, 0.0, 0.0, np.random.default_rng(12))
    np.testing.assert_array_equal(alice, eve)
    np.testing.assert_array_equal(bob, eve)
    assert abs(int(eve.sum()) - n / 2) <= _binomial_tolerance(n, 0.5)


# -- numpy and qiskit agree statistically -----------------------------------------------------------------


def _two_proportion_bound(k1: int, n1: int, k2: int, n2: int) -> float:
    """Z times the standard error of p1_hat - p2_hat under the pooled null p1 = p2."""
    pooled = (k1 + k2) / (n1 + n2)
    return Z * math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))


@pytest.mark.qiskit
def test_photon_error_rates_agree(qiskit_backend):
    numpy_backend = get_backend("numpy")
    bits, bases, meas = _bb84_inputs(200_000, seed=13)
    flip = 0.03
    out_n = numpy_backend.measure_photons(bits, bases, meas, flip, np.random.default_rng(14))
    out_q = qiskit_backend.measure_photons(bits, bases, meas, flip, np.random.default_rng(15))
    for b in (0, 1):
        for basis in (0, 1):
            for m in (0, 1):
                sel = (bits == b) & (bases == basis) & (meas == m)
                n = int(sel.sum())
                k_n, k_q = int((out_n[sel] != b).sum()), int((out_q[sel] != b).sum())
                assert abs(k_n / n - k_q / n) <= _two_proportion_bound(k_n, n, k_q, n), (b, basis, m)
                # and both sit on the theory: flip in the same basis, a fair coin otherwise
                p = flip if basis == m else 0.5
                for k in (k_n, k_q):
                    assert abs(k - n * p) <= _binomial_tolerance(n, p), (b, basis, m, k)


@pytest.mark.qiskit
def test_pair_correlators_and_chsh_agree(qiskit_backend):
    numpy_backend = get_backend("numpy")
    rng = np.random.default_rng(16)
    n = 400_000
    # The deployed settings (qcore.channel): Alice X, Z; Bob X, Z, W, V.
    a8 = ALICE_ANGLES8[rng.integers(0, ALICE_ANGLES8.size, n)].astype(np.int8)
    b8 = BOB_ANGLES8[rng.integers(0, BOB_ANGLES8.size, n)].astype(np.int8)
    no_eve = np.full(n, -1, np.int8)
    flip_a, flip_b = 0.02, 0.03
    corr = {}
    for be, seed in ((numpy_backend, 17), (qiskit_backend, 18)):
        alice, bob, eve = be.measure_pairs(a8, b8, no_eve, flip_a, flip_b, np.random.default_rng(seed))
        assert not eve.any()
        corr[be.name] = _correlators(a8, b8, alice, bob)
    assert len(corr["qiskit"]) == ALICE_ANGLES8.size * BOB_ANGLES8.size
    for key, (e_q, n_q) in corr["qiskit"].items():
        e_n, n_n = corr["numpy"][key]
        sd = math.sqrt((1 - e_q**2) / n_q + (1 - e_n**2) / n_n)
        assert abs(e_q - e_n) <= Z * sd, key
    s_q, var_q = _chsh(corr["qiskit"])
    s_n, var_n = _chsh(corr["numpy"])
    assert abs(s_q - s_n) <= Z * math.sqrt(var_q + var_n)
    # Honest pairs: S = 2 sqrt(2) (1 - 2q) with q the combined flip probability of the two arms.
    q = (1 - (1 - 2 * flip_a) * (1 - 2 * flip_b)) / 2
    s_theory = 2 * math.sqrt(2) * (1 - 2 * q)
    for s, var in ((s_q, var_q), (s_n, var_n)):
        assert abs(s - s_theory) <= Z * math.sqrt(var)


@pytest.mark.parametrize("backend", PAIR_BACKENDS, indirect=True)
def test_eve_on_every_pair_drops_chsh_to_sqrt2(backend):
    # Intercept-resend at 0 or pi/4 makes E(a, b) a product of two cosines: S = sqrt(2) times the noise
    # factor, at the classical bound instead of 2 sqrt(2). Only the four CHSH settings are sent.
    rng = np.random.default_rng(19)
    n = 100_000
    a8 = np.where(rng.random(n) < 0.5, 0, 2).astype(np.int8)
    b8 = np.where(rng.random(n) < 0.5, 1, 3).astype(np.int8)
    e8 = np.where(rng.random(n) < 0.5, 0, 2).astype(np.int8)
    flip_a, flip_b = 0.02, 0.03
    alice, bob, eve = backend.measure_pairs(a8, b8, e8, flip_a, flip_b, np.random.default_rng(20))
    s, var = _chsh(_correlators(a8, b8, alice, bob))
    s_theory = math.sqrt(2) * (1 - 2 * flip_a) * (1 - 2 * flip_b)
    assert abs(s - s_theory) <= Z * math.sqrt(var)
    # Eve learns Alice's bit up to Alice's arm noise where their angles match, and a fair coin otherwise.
    for match, p in ((a8 == e8, flip_a), (a8 != e8, 0.5)):
        k, m = int((alice[match] != eve[match]).sum()), int(match.sum())
        assert abs(k - m * p) <= _binomial_tolerance(m, p)


# -- qiskit specifics ---------------------------------------------------------------------------------------


@pytest.mark.qiskit
def test_qiskit_is_reproducible_from_the_seed(qiskit_backend):
    bits, bases, meas = _bb84_inputs(30_000, seed=21)
    first = qiskit_backend.measure_photons(bits, bases, meas, 0.1, np.random.default_rng(22))
    again = qiskit_backend.measure_photons(bits, bases, meas, 0.1, np.random.default_rng(22))
    other = qiskit_backend.measure_photons(bits, bases, meas, 0.1, np.random.default_rng(23))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)

    rng = np.random.default_rng(24)
    n = 6_000
    a8 = rng.integers(0, 3, n).astype(np.int8)
    b8 = rng.integers(1, 4, n).astype(np.int8)
    e8 = np.where(rng.random(n) < 0.3, rng.integers(0, 2, n) * 2, -1).astype(np.int8)  # Eve on some
    runs = [
        qiskit_backend.measure_pairs(a8, b8, e8, 0.05, 0.1, np.random.default_rng(s)) for s in (25, 25, 26)
    ]
    for x, y in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2], strict=True))


@pytest.mark.qiskit
def test_qiskit_fibre_noise_comes_from_the_noise_model(qiskit_backend):
    bits, bases, meas = _bb84_inputs(100, seed=27)
    qiskit_backend.measure_photons(bits, bases, meas, 0.1, np.random.default_rng(28))
    circuits = list(qiskit_backend._photon_circuits.values())
    assert circuits
    for circuit in circuits:
        labels = [getattr(inst.operation, "label", None) for inst in circuit.data]
        assert labels.count(FIBER_LABEL) == 1
    model = qiskit_backend._noise_model((0.1,))
    assert FIBER_LABEL in model.noise_instructions


def _bad_photon_calls():
    ok = np.array([0, 1, 1, 0], np.uint8)
    gen = np.random.default_rng(0)
    return [
        ("bases", (ok, ok[:3], ok, 0.1, gen)),
        ("bits", (np.array([0, 2, 1, 0]), ok, ok, 0.1, gen)),
        ("meas_bases", (ok, ok, np.array([0, -1, 1, 0]), 0.1, gen)),
        ("bits", (ok.astype(float), ok, ok, 0.1, gen)),
        ("bits", (ok.reshape(2, 2), ok, ok, 0.1, gen)),
        ("flip", (ok, ok, ok, -0.1, gen)),
        ("flip", (ok, ok, ok, 1.5, gen)),
        ("flip", (ok, ok, ok, float("nan"), gen)),
        ("flip", (ok, ok, ok, "high", gen)),
        ("rng", (ok, ok, ok, 0.1, 42)),
    ]


def _bad_pair_calls():
    a = np.array([0, 1, 2], np.int8)
    b = np.array([1, 2, 3], np.int8)
    e = np.array([-1, 0, 2], np.int8)
    gen = np.random.default_rng(0)
    return [
        ("bob_angle8", (a, b[:2], e, 0.0, 0.0, gen)),
        ("eve_angle8", (a, b, e[:2], 0.0, 0.0, gen)),
        ("alice_angle8", (np.array([0, 8, 1]), b, e, 0.0, 0.0, gen)),
        ("bob_angle8", (a, np.array([1, -1, 3]), e, 0.0, 0.0, gen)),
        ("eve_angle8", (a, b, np.array([0, 9, -1]), 0.0, 0.0, gen)),
        ("flip_a", (a, b, e, 2.0, 0.0, gen)),
        ("flip_b", (a, b, e, 0.0, -1e-9, gen)),
    ]


@pytest.mark.qiskit
@pytest.mark.parametrize(("field", "args"), _bad_photon_calls())
def test_qiskit_bad_photon_inputs(qiskit_backend, field, args):
    with pytest.raises(ConfigError) as info:
        qiskit_backend.measure_photons(*args)
    assert info.value.field == field


@pytest.mark.qiskit
@pytest.mark.parametrize(("field", "args"), _bad_pair_calls())
def test_qiskit_bad_pair_inputs(qiskit_backend, field, args):
    with pytest.raises(ConfigError) as info:
        qiskit_backend.measure_pairs(*args)
    assert info.value.field == field
