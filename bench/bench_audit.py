"""What the audit anchors cost: `qlink audit verify` reading a whole log, a daemon reading back the peers'
last heads at start, and the check of a peer's copy of our head (``AuditLog.digest_at``).

    .venv/bin/python bench/bench_audit.py                   # a log of 200,000 records
    .venv/bin/python bench/bench_audit.py --records 1000000

The log is written with the daemon's own ``AuditLog`` (fsync per record skipped here: it is the writer's
cost, not the reader's), one ``peer_audit_head`` every 100 records as a periodic anchor would leave.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qlinkmed.qlinkd.ops import audit as audit_module
from qlinkmed.qlinkd.ops.audit import PEER_HEAD, Anchor, AuditLog, latest_peer_heads, verify


def _write(path: Path, records: int) -> list[Anchor]:
    fsync = audit_module.os.fsync
    audit_module.os.fsync = lambda fd: None  # the reader's costs only
    anchors = []
    try:
        with AuditLog.open(path, facility="hospital-a") as log:
            for n in range(records):
                if n % 100 == 99:
                    log.record(PEER_HEAD, peer="hospital-b", head_seq=n, head_digest="b" * 64)
                    anchors.append(Anchor(holder="hospital-b", head=log.head))
                else:
                    log.record("keys_delivered", sae="pacs-a", slave="pacs-b", key_IDs=[f"k{n}"], bits=256)
    finally:
        audit_module.os.fsync = fsync
    return anchors


def _timed(what: str, action: object, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        action()  # type: ignore[operator]
    took = (time.perf_counter() - start) / repeat
    print(f"{what:<58} {took * 1e3:10.3f} ms")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        anchors = _write(path, args.records)
        size = path.stat().st_size
        print(f"log: {args.records:,} records, {size / 1e6:.1f} MB, {len(anchors):,} anchors")
        took = _timed("verify: chain only", lambda: verify(path))
        print(f"{'':<58} {args.records / took:10,.0f} records/s")
        _timed(
            f"verify: chain and all {len(anchors):,} anchors (--peer-log)",
            lambda: verify(path, anchors=anchors),
        )
        _timed(
            "daemon start: last head of a peer (recorded recently)",
            lambda: latest_peer_heads(path, ["hospital-b"]),
        )
        _timed(
            "daemon start: a peer never anchored (whole log read back)",
            lambda: latest_peer_heads(path, ["x"]),
        )
        with AuditLog.open(path, facility="hospital-a") as log:
            head = log.head.seq
            _timed(
                "peer's copy of our head, 100 records back (digest_at)", lambda: log.digest_at(head - 100), 20
            )
            _timed(f"peer's copy of our head, {head // 2:,} records back", lambda: log.digest_at(head // 2))


if __name__ == "__main__":
    main()
