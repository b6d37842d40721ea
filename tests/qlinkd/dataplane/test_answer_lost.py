"""An EHR message the receiver stored but could not answer (its traffic key aged out, or the connection
dropped, right after the inbox commit) is audited once as received, and the sender, sending it again on a
new session, hears "delivered" from the inbox's record. The hour's soak of issue 16 found 6 of 14,494
messages in B's inbox without their transfer_received record: the record was written after the answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any

import pytest

from qlinkmed.qlinkd.dataplane import receiver
from qlinkmed.qlinkd.dataplane.inbox import Inbox
from qlinkmed.qlinkd.dataplane.manifest import FileEntry, TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing
from qlinkmed.qlinkd.errors import RekeyRequired
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from qlinkmed.qlinkd.ops.toml_reader import Address
from tests.qlinkd.dataplane.test_dataplane import A, B, PairedKeys, _audit_records, _fhir_messages, _plane


@pytest.mark.asyncio
async def test_a_stored_message_whose_answer_is_lost_is_audited_once_and_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_next_send = False
    deliver_ehr = Inbox.deliver_ehr
    send = receiver.ReceiverSession._send

    def stored(self: Inbox, *args: Any, **kwargs: Any) -> float:
        nonlocal fail_next_send
        at = deliver_ehr(self, *args, **kwargs)
        fail_next_send = True  # the answer to this message is the next frame B seals
        return at

    def answering(self: receiver.ReceiverSession, message: Any) -> None:
        nonlocal fail_next_send
        if fail_next_send:
            fail_next_send = False
            raise RekeyRequired("age", "traffic key is 180 s old (injected)")
        send(self, message)

    monkeypatch.setattr(Inbox, "deliver_ehr", stored)
    monkeypatch.setattr(receiver.ReceiverSession, "_send", answering)
    certs = write_demo_pki(tmp_path / "pki", [A, B])
    keys = PairedKeys()
    b = _plane(tmp_path, certs, keys, B, A, None)
    port = await b.start(Address(host="127.0.0.1", port=0))
    a = _plane(tmp_path, certs, keys, A, B, Address(host="127.0.0.1", port=port))
    senders = asyncio.create_task(a.run_senders())
    body = _fhir_messages(1)[0]
    entry = FileEntry("m.json", len(body), hashlib.sha256(body).hexdigest(), "fhir")
    manifest = a.new_manifest(B, TransferKind.EHR, [entry])
    try:
        outcome = await asyncio.wait_for(a.queue_ehr(manifest, body), 60)
        assert outcome.state is Outgoing.DELIVERED
        assert b.inbox.read_file(manifest.transfer_id, 0) == body
    finally:
        senders.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await senders
        await b.stop()
        a.close()
        b.close()
    received = [
        r for r in _audit_records(tmp_path, B, "transfer_received") if r["transfer"] == manifest.transfer_id
    ]
    assert len(received) == 1
