"""HL7 order per sender needs the data plane to deliver one peer's EHR messages in the order they were
queued. A message sent under AEAD goes in chunks, and between a study's chunks queued EHR messages may
overtake (they are latency-bound); between an EHR message's own chunks they must not, or a later message
from the same sender arrives first."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlinkmed.qlinkd.dataplane.manifest import TransferKind
from qlinkmed.qlinkd.dataplane.records import Outgoing
from tests.qlinkd.dataplane.test_dataplane import Harness, PairedKeys


def _oru(control_id: str, observations: int) -> bytes:
    head = f"MSH|^~\\&|LIS|A|EHR|B|20240101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
    body = "PID|1||123^^^A^MR||DOE^JANE\rOBR|1|O1|F1|2345-7^Glucose^LN\r"
    text = "normal findings " * 100
    obx = "".join(f"OBX|{i}|TX|report^Report^L||{text}||||||F\r" for i in range(1, observations))
    return (head + body + obx).encode()


@pytest.mark.asyncio
async def test_ehr_messages_under_aead_arrive_in_the_order_they_were_queued(tmp_path: Path) -> None:
    keys = PairedKeys(budget_bits=300)  # a session key, no pad: every message goes under AEAD
    h = Harness(tmp_path, keys)
    big = _oru("BIG", 2_500)  # several chunks
    assert len(big) > 3 << 20
    small = [_oru(f"S{i}", 3) for i in range(3)]
    queued = [h.queue([("big.hl7", big, "hl7")], TransferKind.EHR)]
    queued += [h.queue([(f"s{i}.hl7", m, "hl7")], TransferKind.EHR) for i, m in enumerate(small)]
    await h.run_until(lambda: len(h.finished) == len(queued), timeout=60)
    assert [state for _, state, _ in h.finished] == [Outgoing.DELIVERED] * len(queued)
    # The sender hears "delivered" for each only after the inbox holds it: this is the arrival order.
    assert [tid for tid, _, _ in h.finished] == [m.transfer_id for m in queued]
    records = [h.b_records.incoming(m.transfer_id) for m in queued]
    delivered_at = [r.delivered_at or 0.0 if r else 0.0 for r in records]
    assert delivered_at == sorted(delivered_at)
