"""Regenerate tests/vectors/bb84_transcript.json: one seeded BB84 round, every crossing in hex.

    python -m tests.vectors.generate_transcript

How it was checked independently of the code that produced it: tests/qcore/test_transcript.py recomputes the
final key from the recorded privacy-amplification seed with the explicit-matrix Toeplitz reference
(`toeplitz_hash_reference`), and recomputes every Wegman-Carter tag with a separate Poly1305 call over
the recorded bytes. Regenerate only on a deliberate change of the wire format or of the protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlinkmed.qcore.harness import run_pair
from qlinkmed.qcore.sim import _key_hash, make_sessions
from tests.vectors.transcript_config import VECTOR_CONFIG, config_as_dict


def main() -> None:
    alice, bob, _, _ = make_sessions(VECTOR_CONFIG)
    transcript = run_pair(alice, bob)
    assert alice.outcome is not None and alice.outcome.established, "vector round must establish a key"
    crossings = [{"direction": d.value, "hex": data.hex()} for d, data in transcript.crossings]
    vector = {
        "description": "BB84 round, single-photon source, in-memory harness; crossings in delivery order",
        "config": config_as_dict(VECTOR_CONFIG),
        "crossings": crossings,
        "final_key_bits": alice.outcome.final_key_bits,
        "final_key_sha256": _key_hash(alice.outcome.key),
    }
    path = Path(__file__).with_name("bb84_transcript.json")
    path.write_text(json.dumps(vector, indent=1) + "\n")
    print(f"wrote {path} ({len(crossings)} crossings, key {vector['final_key_bits']} bits)")


if __name__ == "__main__":
    main()
