"""A round through the two link machines draws every secret choice from the ends' secret sources and every
published seed from their public sources (issue 14, item 1: the daemon used one PCG64 stream for both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qlinkmed.qcore import messages as qm
from qlinkmed.qlinkd.link import messages as lm
from tests.link_pair import LinkPair
from tests.recording import recorded_party


def test_a_link_round_takes_secrets_from_the_secret_sources_and_seeds_from_the_public_ones(
    tmp_path: Path,
) -> None:
    alice, bob = recorded_party(101, 102), recorded_party(201, 202)
    pair = LinkPair(tmp_path, randomness=(alice.randomness, bob.randomness))
    published: list[object] = []

    def watch(sender: str, round_id: int, message: object, data: bytes) -> list[bytes]:
        published.append(message)
        return [data]

    pair.tap = watch
    pair.connect()
    assert not alice.secret.draws and not bob.secret.draws  # the hello draws nothing
    pair.run_round()
    assert all(ended.established for end in pair.ends() for ended in pair.ended(end))

    n = pair.pulses
    (train,) = [msg for role, msg in pair.submissions if role == "alice"]
    (settings,) = [msg for role, msg in pair.submissions if role == "bob"]
    assert isinstance(train, lm.PulseTrain) and isinstance(settings, lm.AnalyserSettings)
    # Alice's raw bits and bases, Bob's bases: the first draws of their secret sources, bit for bit.
    assert np.array_equal(train.bits, alice.secret.bits(0, n))
    assert np.array_equal(train.bases, alice.secret.bits(1, n))
    assert np.array_equal(settings.settings, bob.secret.bits(0, n))
    # The sample: the candidates with the smallest keys of Alice's third secret draw.
    (sifting,) = [m for m in published if isinstance(m, qm.Sifting)]
    keys = np.frombuffer(alice.secret.draws[2], dtype="<u8")
    sample = sifting.sample.astype(bool)
    assert keys.size == sample.size and keys[sample].max() < keys[~sample].min()
    assert len(alice.secret.draws) == 3 and len(bob.secret.draws) == 1

    # Every published seed is a public draw, and the public sources drew nothing else.
    (verify,) = [m for m in published if isinstance(m, qm.Verify)]
    (amplify,) = [m for m in published if isinstance(m, qm.Amplify)]
    assert sifting.cascade_seed == int.from_bytes(alice.public.draws[0], "little") >> 1
    assert np.array_equal(amplify.seed, alice.public.bits(1, amplify.seed.size))
    assert np.array_equal(verify.seed, bob.public.bits(0, verify.seed.size))
    assert len(alice.public.draws) == 2 and len(bob.public.draws) == 1
