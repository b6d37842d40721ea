"""A sender lets queued EHR messages overtake a study between its chunks, from inside the study's stream.
It must never do so from inside an EHR message's own stream: that nests one message's send inside
another's, once per message while new ones keep arriving, until the recursion limit ends the sender and,
with it, the daemon (the hour's soak of issue 16 died so at 5 messages a second on a loaded host)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import pytest

from qlinkmed.qlinkd.dataplane import sender
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from qlinkmed.qlinkd.pool.values import DeliveredKey
from tests.paths import DATA
from tests.qlinkd.dataplane.test_dataplane import A, B, Harness, PairedKeys, _fhir_messages, _plane

MESSAGES = 300


@pytest.mark.asyncio
async def test_ehr_sends_never_nest_while_new_messages_keep_arriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    depth = deepest = 0
    original = sender._KeyedSession._send_pending_ehr

    async def counted(self: sender._KeyedSession) -> None:
        nonlocal depth, deepest
        depth += 1
        deepest = max(deepest, depth)
        try:
            await original(self)
        finally:
            depth -= 1

    monkeypatch.setattr(sender._KeyedSession, "_send_pending_ehr", counted)
    keys = PairedKeys(budget_bits=300)  # one session key and no pads: every message goes in AEAD chunks
    h = Harness(tmp_path, keys)
    body = (DATA / "oru_r01.hl7").read_bytes()
    queued = [h.queue([(f"m{i}.hl7", body, "hl7")], TransferKind.EHR) for i in range(MESSAGES)]
    # The harness sets the sender's wake event every 10 ms, as new messages queued at A would.
    await h.run_until(lambda: len(h.finished) == len(queued), timeout=120)
    assert [state for _, state, _ in h.finished] == [Outgoing.DELIVERED] * MESSAGES
    assert deepest <= 1, f"an EHR message's send nested {deepest} deep inside another's"


class _FailsOnce(PairedKeys):
    """Raises an error no data-plane code expects on the first key taken, then serves keys."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        if not self.failed:
            self.failed = True
            raise RecursionError("maximum recursion depth exceeded (injected)")
        return await super().take(peer, size_bits, single=single)


@pytest.mark.asyncio
async def test_an_internal_error_in_a_session_ends_the_session_not_the_sender(tmp_path: Path) -> None:
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = _FailsOnce()
    b = _plane(tmp_path, certs, keys, B, A, None)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port))
    senders = asyncio.create_task(a.run_senders())
    body = _fhir_messages(1)[0]
    entry = FileEntry("m.json", len(body), hashlib.sha256(body).hexdigest(), "fhir")
    try:
        outcome = await asyncio.wait_for(a.queue_ehr(a.new_manifest(B, TransferKind.EHR, [entry]), body), 30)
        assert keys.failed and outcome.state is Outgoing.DELIVERED
        assert not senders.done()
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
        b.close()
