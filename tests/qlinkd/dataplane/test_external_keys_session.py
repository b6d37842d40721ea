"""Data-plane sessions keyed through ETSI GS QKD 014: the real sender and receiver (the in-memory harness
of test_dataplane.py), each end an SAE of its own qlinkd KME over mutual TLS. A KME whose largest key is
smaller than a one-time pad gives the pad as several keys, named in the frame; a pad key is never split
(none is taken); a KME that cannot supply a pad sends the message under AEAD, with the fallback reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.qlinkd.dataplane.external_keys import ExternalKeys
from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing
from qlinkmed.qlinkd.errors import KmeUnavailable
from qlinkmed.qlinkd.pool.values import DeliveredKey
from qlinkmed.qlinkd.seal.constants import OTP_RANGE_VERSION, OTP_VERSION
from qlinkmed.qlinkd.seal.header import parse_key_ids
from tests.qlinkd.dataplane.test_dataplane import A, B, Harness, PairedKeys, _fhir_messages
from tests.qlinkd.dataplane.test_external_keys import (  # noqa: F401 (fixtures)
    K1,
    K2,
    SAE_A,
    SAE_B,
    Kmes,
    certs,
    kmes,
)


class EtsiPair(PairedKeys):
    """The harness's one key source: the sender takes as A's SAE at kme-1, the receiver fetches as B's
    SAE at kme-2 (the harness names A the sender and B the receiver)."""

    def __init__(self, pair: Kmes) -> None:
        super().__init__()
        self.sender = ExternalKeys(B, pair.client(SAE_A, K1), sae_id=SAE_A, peer_sae_id=SAE_B)
        self.receiver = ExternalKeys(A, pair.client(SAE_B, K2), sae_id=SAE_B, peer_sae_id=SAE_A)
        self.takes: list[list[DeliveredKey]] = []
        self.fail_above_bits: int | None = None

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        if self.fail_above_bits is not None and size_bits > self.fail_above_bits:
            raise KmeUnavailable("not enough key material", url=self.sender.url, status=503)
        keys = await self.sender.take(peer, size_bits, single=single)
        self.takes.append(keys)
        return keys

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        return await self.receiver.fetch(peer, key_ids, timeout)


@pytest.mark.asyncio
async def test_ehr_by_one_time_pad_over_several_kme_keys_and_no_split_pad_key(
    tmp_path: Path,
    kmes: Kmes,  # noqa: F811
) -> None:
    kmes.auto_forward = True
    keys = EtsiPair(kmes)
    h = Harness(tmp_path, keys)
    frames: list[bytes] = []

    def hook(n: int, frame: bytes) -> list[bytes]:
        frames.append(frame)
        return [frame]

    h.hook = hook
    bodies = _fhir_messages(3)
    ms = [h.queue([(f"m{i}.json", body, "fhir")], TransferKind.EHR) for i, body in enumerate(bodies)]
    await h.run_until(lambda: len(h.finished) == 3)
    assert [state for _, state, _ in h.finished] == [Outgoing.DELIVERED] * 3
    assert [h.inbox.read_file(m.transfer_id, 0) for m in ms] == bodies
    assert not h.fallbacks
    # Every message paid for its own pad with several 4096-bit KME keys, named in its frame; no pad key
    # was announced (the KME cannot give one 16 KiB key, and small ones would be discarded unused).
    pads = [f for f in frames if f[0] in (OTP_VERSION, OTP_RANGE_VERSION)]
    assert [f[0] for f in pads] == [OTP_VERSION] * 3
    message_takes = [t for t in keys.takes if len(t) > 1]
    assert len(message_takes) == 3
    for frame, taken in zip(pads, message_takes, strict=True):
        named, _ = parse_key_ids(frame, 1)
        assert [str(k) for k in named] == [k.key_id for k in taken]
    # The session key and the pads' keys each left kme-2 once, for B's SAE.
    assert kmes.stores[K2].has_fetched(keys.takes[0][0].key_id)


@pytest.mark.asyncio
async def test_a_kme_that_cannot_supply_the_pad_sends_the_message_under_aead(
    tmp_path: Path,
    kmes: Kmes,  # noqa: F811
) -> None:
    kmes.auto_forward = True
    keys = EtsiPair(kmes)
    keys.fail_above_bits = 256  # session keys only
    h = Harness(tmp_path, keys)
    (body,) = _fhir_messages(1)
    m = h.queue([("m.json", body, "fhir")], TransferKind.EHR)
    await h.run_until(lambda: len(h.finished) == 1)
    assert h.finished == [(m.transfer_id, Outgoing.DELIVERED, None)]
    assert h.inbox.read_file(m.transfer_id, 0) == body
    assert len(h.fallbacks) == 1
    assert "the key source cannot supply the one-time pad" in h.fallbacks[0]
    assert "answered 503: not enough key material" in h.fallbacks[0]
