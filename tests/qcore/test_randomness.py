"""The parties' randomness (qcore.randomness): the bulk draws are exact and unbiased, and a round draws its
secret choices and its published seeds from two separate sources (issue 14, item 1)."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from qlinkmed.qcore import messages as m
from qlinkmed.qcore.channel import E91_ALICE_PROBABILITIES, E91_BOB_PROBABILITIES, prepare_bb84
from qlinkmed.qcore.codec import decode
from qlinkmed.qcore.errors import LocalProtocolError, UsageError
from qlinkmed.qcore.harness import Hop, run_pair
from qlinkmed.qcore.params import DecoySource, ProtocolKind, SourceKind
from qlinkmed.qcore.randomness import ByteSupplier, PartyRandomness, RandomSource
from qlinkmed.qcore.round_state import BaseSession
from qlinkmed.qcore.sifting import choose_sample
from qlinkmed.qcore.sim import SimConfig, make_sessions
from tests.recording import RecordedParty, recorded_party


def _fixed(*chunks: bytes) -> RandomSource:
    """A source that hands out the given byte strings, one per draw."""
    queue: Iterator[bytes] = iter(chunks)
    return RandomSource(lambda n: next(queue))


def _seeded(seed: int) -> RandomSource:
    return RandomSource.seeded(seed)


# ---- the bulk draws --------------------------------------------------------------------------------------
def test_bits_are_the_supplied_bytes_unpacked() -> None:
    assert _fixed(b"\xa5\x80").bits(9).tolist() == [1, 0, 1, 0, 0, 1, 0, 1, 1]


def test_a_short_supplier_is_an_error_not_a_short_key() -> None:
    with pytest.raises(LocalProtocolError, match="returned 1 bytes, not 2"):
        RandomSource(lambda n: b"\x00").bits(16)


def test_uint63_is_the_top_63_bits_of_eight_bytes() -> None:
    assert _fixed(b"\xff" * 8).uint63() == 2**63 - 1
    assert _fixed(b"\x01" + b"\x00" * 7).uint63() == 0


def _calls(*makers: Callable[[int], bytes]) -> RandomSource:
    """A source whose k-th draw of n bytes is makers[k](n)."""
    queue = iter(makers)

    def supply(n: int) -> bytes:
        return next(queue)(n)

    return RandomSource(supply)


def test_integers_reject_the_words_that_would_bias_the_remainder() -> None:
    # high = 3: a byte is kept only below 255 (= 3 * 85); 255 would otherwise count once more for residue 0.
    values = _calls(lambda n: bytes([255, 0, 1, 2, 254, 255]) + bytes(n - 6)).integers(3, 4)
    assert values.tolist() == [0, 1, 2, 254 % 3]
    assert values.dtype == np.uint8


def test_integers_draw_again_when_too_many_words_were_rejected() -> None:
    # Every word of the first draw is rejected; the second supplies the values.
    source = _calls(lambda n: b"\xff" * n, lambda n: bytes([7, 8, 9]) + bytes(n - 3))
    assert source.integers(3, 3).tolist() == [1, 2, 0]


def test_integers_are_uniform_over_a_range_that_does_not_divide_the_word() -> None:
    values = _seeded(1).integers(3, 300_000)
    counts = np.bincount(values, minlength=3)
    assert counts.size == 3
    # Chi-square with 2 degrees of freedom; 13.8 is its 0.1% quantile.
    expected = values.size / 3
    assert float(((counts - expected) ** 2 / expected).sum()) < 13.8
    assert _seeded(2).integers(1000, 50_000).max() < 1000


def test_choice_follows_the_probabilities_and_reaches_the_last_class() -> None:
    p = DecoySource().probabilities
    classes = _seeded(3).choice(p, 200_000)
    freq = np.bincount(classes, minlength=3) / classes.size
    assert np.allclose(freq, p, atol=0.005)
    # The largest possible draw (all bits set) lands in the last class, never past it.
    assert _calls(lambda n: b"\xff" * n).choice(p, 1).tolist() == [2]
    assert _calls(lambda n: b"\x00" * n).choice(p, 1).tolist() == [0]
    with pytest.raises(UsageError):
        _seeded(0).choice([0.5, 0.6], 3)


def test_choice_refines_only_the_draws_whose_first_byte_straddles_a_bound() -> None:
    # Bound 0.7 lies inside byte 179's interval [179/256, 180/256): that draw takes 8 more bytes, whose
    # top 48 bits decide; bytes 0 and 255 are decided at once.
    p = DecoySource().probabilities
    for rest, expected in ((b"\x00" * 8, 0), (b"\xff" * 8, 1)):
        requests: list[int] = []
        source = RandomSource(_serving([bytes([0, 179, 255]), rest], requests))
        assert source.choice(p, 3).tolist() == [0, expected, 2]
        assert requests == [3, 8]


def _serving(draws: list[bytes], requests: list[int]) -> ByteSupplier:
    """Hands out `draws` in order, noting the size of each request."""
    queue = iter(draws)

    def supply(n: int) -> bytes:
        requests.append(n)
        return next(queue)

    return supply


def test_subset_mask_sets_exactly_k_and_every_subset_is_equally_likely() -> None:
    source = _seeded(4)
    counts: dict[tuple[int, ...], int] = dict.fromkeys(itertools.combinations(range(4), 2), 0)
    for _ in range(6000):
        mask = source.subset_mask(4, 2)
        chosen = tuple(int(i) for i in np.flatnonzero(mask))
        counts[chosen] += 1  # a KeyError here: not exactly two positions
    # Chi-square with 5 degrees of freedom; 20.5 is its 0.1% quantile.
    observed = np.array(list(counts.values()))
    assert float(((observed - 1000) ** 2 / 1000).sum()) < 20.5
    assert int(_seeded(5).subset_mask(10_000, 3_000).sum()) == 3_000


def test_subset_mask_rejects_a_tie_at_the_boundary_instead_of_breaking_it() -> None:
    tied = np.array([5, 5, 9], dtype="<u8").tobytes()  # k = 1: the smallest and the next one tie
    distinct = np.array([9, 5, 7], dtype="<u8").tobytes()
    assert _fixed(tied, distinct).subset_mask(3, 1).tolist() == [0, 1, 0]


def test_the_sample_is_drawn_from_the_source_it_is_given() -> None:
    keys = np.array([40, 10, 30, 20], dtype="<u8").tobytes()
    assert choose_sample(_fixed(keys), 4, 0.5).tolist() == [0, 1, 0, 1]


def test_a_source_never_shows_its_state() -> None:
    assert repr(_seeded(6)) == "RandomSource(state=(hidden))"


# ---- the separation --------------------------------------------------------------------------------------
def test_the_parties_choices_take_no_generator() -> None:
    # prepare_bb84 and the sessions have no parameter through which a numpy generator could reach them.
    assert "rng" not in inspect.signature(prepare_bb84).parameters
    parameters = list(inspect.signature(BaseSession.__init__).parameters)
    assert parameters == ["self", "config", "auth", "randomness"]


def _run(config: SimConfig, alice: RecordedParty, bob: RecordedParty) -> dict[str, object]:
    """One round with recorded sources; what each party chose and what was published."""
    a, b, _, _ = make_sessions(config, randomness=(alice.randomness, bob.randomness))
    # The sessions drop their pulse records once sifted: read them first.
    records = {
        "alice_bits": a._bits.tolist(),
        "alice_bases": a._settings.tolist(),
        "bob_bases": b._settings.tolist(),
    }
    transcript = run_pair(a, b)
    sent = [decode(data) for hop, data in transcript.crossings if hop is Hop.TO_BOB]
    back = [decode(data) for hop, data in transcript.crossings if hop is Hop.TO_ALICE]
    sifting = next(x for x in sent if isinstance(x, m.Sifting))
    amplify = next(x for x in sent if isinstance(x, m.Amplify))
    verify = next(x for x in back if isinstance(x, m.Verify))
    detections = next(x for x in back if isinstance(x, m.Detections))
    assert a.outcome is not None and a.outcome.established
    return {
        **records,
        "bob_bases_sent": detections.bases.tolist(),
        "sample": sifting.sample.tolist(),
        "raw_key": a._raw_key.tolist(),
        "cascade_seed": sifting.cascade_seed,
        "verify_seed": verify.seed.tolist(),
        "amplify_seed": amplify.seed.tolist(),
        "key": a.outcome.key.tolist(),
    }


SECRET_CHOICES = ("alice_bits", "alice_bases", "bob_bases", "bob_bases_sent", "sample", "raw_key")
CONFIG = SimConfig(qubits=1_000_000, seed=11)


def test_changing_only_the_public_sources_changes_no_secret_choice() -> None:
    one = _run(CONFIG, recorded_party(1, 2), recorded_party(3, 4))
    two = _run(CONFIG, recorded_party(1, 20), recorded_party(3, 40))
    for name in SECRET_CHOICES:
        assert one[name] == two[name], name
    # ...while every published seed, and so the key, did change.
    for name in ("cascade_seed", "verify_seed", "amplify_seed", "key"):
        assert one[name] != two[name], name


@pytest.mark.parametrize("per_pulse", [True, False], ids=["per-pulse", "event-driven"])
def test_every_secret_choice_is_the_secret_sources_and_every_published_seed_the_public_ones(
    per_pulse: bool,
) -> None:
    alice, bob = recorded_party(1, 2), recorded_party(3, 4)
    config = dataclasses.replace(CONFIG, per_pulse=per_pulse)
    run = _run(config, alice, bob)
    if per_pulse:
        n = CONFIG.qubits
        # Secret: Alice's bits, bases, then the sample's keys; Bob's bases. Nothing else.
        assert len(alice.secret.draws) == 3 and len(bob.secret.draws) == 1
        assert run["alice_bits"] == alice.secret.bits(0, n).tolist()
        assert run["alice_bases"] == alice.secret.bits(1, n).tolist()
        assert run["bob_bases"] == bob.secret.bits(0, n).tolist()
    else:
        # Only the detected pulses are drawn (one chunk): Alice's bits and bases for the gates that clicked,
        # then for the gates only an after-pulse fired, then the sample's keys; Bob's bases likewise.
        assert len(alice.secret.draws) == 5 and len(bob.secret.draws) == 2
        records = np.asarray([run["alice_bits"], run["alice_bases"], run["bob_bases"]])
        total = records.shape[1]
        # The records are the drawn choices in the order sent: the same (bit, basis, basis) triples as the
        # draws, for the one split into clicked and after-pulse-only gates the draws' lengths allow.
        counts = np.bincount(records[0] * 4 + records[1] * 2 + records[2], minlength=8)
        matches = []
        for d in range(max(0, 8 * len(alice.secret.draws[0]) - 7), 8 * len(alice.secret.draws[0]) + 1):
            j = total - d
            if j < 0 or (j + 7) // 8 != len(alice.secret.draws[2]):
                continue
            drawn = [
                np.concatenate((alice.secret.bits(0, d), alice.secret.bits(2, j))),
                np.concatenate((alice.secret.bits(1, d), alice.secret.bits(3, j))),
                np.concatenate((bob.secret.bits(0, d), bob.secret.bits(1, j))),
            ]
            matches.append(
                np.array_equal(np.bincount(drawn[0] * 4 + drawn[1] * 2 + drawn[2], minlength=8), counts)
            )
        assert any(matches)
    keys = np.frombuffer(alice.secret.draws[-1], dtype="<u8")
    sample = np.asarray(run["sample"], dtype=bool)
    assert keys.size == sample.size and keys[sample].max() < keys[~sample].min()
    # Public: Alice's Cascade and privacy-amplification seeds, Bob's verification seed. Nothing else.
    assert len(alice.public.draws) == 2 and len(bob.public.draws) == 1
    assert run["cascade_seed"] == int.from_bytes(alice.public.draws[0], "little") >> 1
    amplify = np.asarray(run["amplify_seed"])
    assert amplify.tolist() == alice.public.bits(1, amplify.size).tolist()
    verify = np.asarray(run["verify_seed"])
    assert verify.tolist() == bob.public.bits(0, verify.size).tolist()


def test_changing_only_the_secret_sources_changes_no_published_seed_stream() -> None:
    alice_one, bob_one = recorded_party(1, 2), recorded_party(3, 4)
    alice_two, bob_two = recorded_party(10, 2), recorded_party(30, 4)
    one = _run(CONFIG, alice_one, bob_one)
    two = _run(CONFIG, alice_two, bob_two)
    assert one["alice_bits"] != two["alice_bits"]
    # The Cascade seed is drawn first and has a fixed size: identical whatever the secret choices were.
    assert one["cascade_seed"] == two["cascade_seed"]
    # The Toeplitz seeds' lengths follow the key's; as far as both reach they are the same bits.
    for name in ("verify_seed", "amplify_seed"):
        first, second = one[name], two[name]
        assert isinstance(first, list) and isinstance(second, list)
        common = min(len(first), len(second))
        assert common > 1000 and first[:common] == second[:common], name


def test_e91_and_decoy_choices_come_from_the_secret_source() -> None:
    for per_pulse in (True, False):
        alice, bob = recorded_party(5, 6), recorded_party(7, 8)
        a, b, _, _ = make_sessions(
            SimConfig(protocol=ProtocolKind.E91, qubits=20_000, seed=3, per_pulse=per_pulse),
            randomness=(alice.randomness, bob.randomness),
        )
        # Per pair: a setting for every pair; event-driven: for the coincidences only (one chunk here).
        settings = int(a._settings.size)
        assert settings == 20_000 if per_pulse else 0 < settings < 20_000
        replay_a = RandomSource(_replay(alice.secret.draws)).choice(E91_ALICE_PROBABILITIES, settings)
        replay_b = RandomSource(_replay(bob.secret.draws)).choice(E91_BOB_PROBABILITIES, settings)
        assert np.array_equal(a._settings, replay_a)
        assert np.array_equal(b._settings, replay_b)
    decoy = recorded_party(9, 10)
    pulses = prepare_bb84(5000, source=SourceKind.WCP, decoy=DecoySource(), secret=decoy.randomness.secret)
    assert not decoy.public.draws
    assert pulses.intensity_class is not None
    replayed = RandomSource(_replay(decoy.secret.draws[2:])).choice(DecoySource().probabilities, 5000)
    assert np.array_equal(pulses.intensity_class, replayed)


def _replay(draws: list[bytes]) -> ByteSupplier:
    queue = iter(draws)
    return lambda n: next(queue)


def test_the_simulator_is_reproducible_from_its_seed() -> None:
    config = SimConfig(qubits=100_000, seed=5)
    first = _run_seeded(config)
    assert first == _run_seeded(config)
    assert first != _run_seeded(SimConfig(qubits=100_000, seed=6))


def _run_seeded(config: SimConfig) -> list[bytes]:
    a, b, _, _ = make_sessions(config)
    return [data for _, data in run_pair(a, b).crossings]


def test_seeded_party_sources_are_independent_streams() -> None:
    party = PartyRandomness.seeded(np.random.SeedSequence(9))
    assert party.secret.bytes(32) != party.public.bytes(32)
