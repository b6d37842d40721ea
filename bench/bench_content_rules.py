"""What the content rules of issue 17 cost per message: `content.validate` of an HL7 v2 message (header
rules, then its structure judged against hl7apy's tables) and of a FHIR Bundle (models, then the Bundle
invariants), against the header rules alone, so the added latency of an EHR message is a number.

    .venv/bin/python bench/bench_content_rules.py            # text report
    .venv/bin/python bench/bench_content_rules.py --json

Each figure is the median of `--repeat` timed runs (after one warm-up run, which builds the structure's
automaton once per process). Also: a 100,000-OBX ORU^R01 (structure checking is linear in the segments)
and a 20,000-segment message of unknown segments (refused after `hl7_structure.MAX_ISSUES` issues).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from qlinkmed.client.demo_data import FHIR_BUNDLE, HL7_ORU
from qlinkmed.qlinkd.content import validate
from qlinkmed.qlinkd.content.hl7_structure import structure_issues
from qlinkmed.qlinkd.errors import ContentError

MSH = b"MSH|^~\\&|RIS|A|EHR|B|20260101120000||ORU^R01|1|P|2.5\r"


def _median_us(run: Callable[[], object], repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _refused(data: bytes) -> None:
    try:
        validate("x.hl7", data)
    except ContentError:
        return
    raise SystemExit("expected a refusal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    segments = [s for s in HL7_ORU.decode().split("\r") if s]
    big = MSH + b"PID|1\rOBR|1\r" + b"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F\r" * 100_000
    garbage = MSH + b"PID|1\rOBR|1\r" + b"QQQ|1\r" * 20_000
    figures = {
        "hl7_oru_validate_us": _median_us(lambda: validate("oru.hl7", HL7_ORU), args.repeat),
        "hl7_oru_structure_only_us": _median_us(
            lambda: structure_issues(segments, "2.5", ["ORU", "R01", "ORU_R01"]), args.repeat
        ),
        "hl7_zzz_refused_us": _median_us(lambda: _refused(MSH + b"ZZZ|1\r"), args.repeat),
        "fhir_bundle_validate_us": _median_us(lambda: validate("b.json", FHIR_BUNDLE), args.repeat),
        "hl7_100k_obx_ms": _median_us(lambda: validate("big.hl7", big), 3) / 1e3,
        "hl7_100k_obx_bytes": len(big),
        "hl7_20k_unknown_segments_refused_ms": _median_us(lambda: _refused(garbage), 3) / 1e3,
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"HL7 ORU^R01 (5 segments), validate:          {figures['hl7_oru_validate_us']:9.0f} us")
    print(f"  of which the structure check:               {figures['hl7_oru_structure_only_us']:9.0f} us")
    print(f"HL7 ORU^R01 of MSH + ZZZ, refused:           {figures['hl7_zzz_refused_us']:9.0f} us")
    print(f"FHIR collection Bundle (2 entries), validate: {figures['fhir_bundle_validate_us']:9.0f} us")
    print(
        f"HL7 ORU^R01 with 100,000 OBX ({figures['hl7_100k_obx_bytes'] / 1e6:.1f} MB), validate: "
        f"{figures['hl7_100k_obx_ms']:7.0f} ms"
    )
    garbage_ms = figures["hl7_20k_unknown_segments_refused_ms"]
    print(f"HL7 with 20,000 unknown segments, refused:   {garbage_ms:9.0f} ms")


if __name__ == "__main__":
    main()
