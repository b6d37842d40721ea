"""`qlink send --to FACILITY PATH...`: queue DICOM studies and PNG/JPEG images for a peer facility.

Files are checked here first (so a bad file is named before anything is uploaded: its size against the
daemon's limits for its kind, from GET /v1/limits, then its content), grouped into one
transfer per DICOM study (every instance sharing a StudyInstanceUID) plus one for the PNG/JPEG images,
and streamed to the local daemon, which checks them again, writes them to its durable outbox and sends
them sealed with QKD-derived keys. By default the command waits until the peer confirms delivery.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..daemon_http import ApiError, TargetError, unreachable
from ..data_http import DataTarget, add_data_target, data_target, error_message, usage_refusal
from ..progress import Progress

if TYPE_CHECKING:
    from qlinkmed.qlinkd.content import ContentInfo
    from qlinkmed.qlinkd.content.limits import ContentLimits

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 4
BLOCK = 1 << 20


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, metavar="FACILITY", help="the receiving facility")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    add_wait_flags(parser)
    add_data_target(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per transfer, no progress bar")
    parser.set_defaults(run=run)


def add_wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        metavar="S",
        help="wait up to S seconds for delivery (default 600)",
    )
    parser.add_argument("--no-wait", action="store_true", help="return once the daemon has queued it")


def wait_seconds(args: argparse.Namespace) -> float:
    return 0.0 if args.no_wait else args.wait


def exit_code(result: dict[str, Any]) -> int:
    state = result.get("state")
    if state == "delivered":
        return EXIT_OK
    if state == "queued":
        return EXIT_OK if result.get("waited") == 0 else EXIT_PENDING
    return EXIT_FAILURE


def describe(result: dict[str, Any]) -> str:
    state = result.get("state")
    size = f"{result.get('files')} file(s), {result.get('bytes', 0):,} bytes"
    what = f"{result.get('kind')} {result.get('transfer_id')} ({size})"
    if state == "delivered":
        seconds = result.get("seconds", 0.0)
        rate = result.get("bytes", 0) * 8 / max(result.get("transfer_seconds") or seconds, 1e-9) / 1e6
        return f"delivered to {result.get('to')}: {what} in {seconds * 1e3:.1f} ms ({rate:,.1f} Mbit/s)"
    if state == "queued":
        return f"queued for {result.get('to')}: {what}; not yet delivered"
    return f"refused by {result.get('to')}: {what}: {result.get('reason')}"


def _stream(header: bytes, files: list[Path], progress: Progress) -> Iterator[bytes]:
    yield header
    for path in files:
        with path.open("rb") as handle:
            while block := handle.read(BLOCK):
                progress.advance(len(block))
                yield block


def daemon_limits(target: DataTarget) -> ContentLimits:
    """The daemon's content limits (GET /v1/limits); the defaults when it does not say (an older daemon, or
    none reachable: the upload then reports that)."""
    from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, ContentLimits

    try:
        status, body = target.json("GET", "/v1/limits")
        if status == 200 and isinstance(body, dict):
            return ContentLimits(**{k: int(body[k]) for k in DEFAULT_LIMITS.to_json()})
    except (ApiError, KeyError, TypeError, ValueError):
        pass
    return DEFAULT_LIMITS


def check_file(path: Path, limits: ContentLimits) -> tuple[bytes, ContentInfo]:
    """(bytes, info) of a file that passes its kind's size limit, checked from its size and first bytes
    before it is read whole, and validation. ContentError (with the message the daemon would give) or
    OSError."""
    from qlinkmed.qlinkd.content import validate
    from qlinkmed.qlinkd.content.limits import HEAD_BYTES, check_size

    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        check_size(path.name, handle.read(HEAD_BYTES), size, limits)
        handle.seek(0)
        data = handle.read()
    return data, validate(path.name, data, limits)


def transfer_query(peer: str, wait: float) -> str:
    """The upload's path and query. Encoded, so a peer name cannot smuggle in parameters of its own."""
    return "/v1/transfers?" + urllib.parse.urlencode({"to": peer, "wait": f"{wait:g}"})


def upload(
    target: DataTarget,
    peer: str,
    kind: str,
    entries: list[tuple[Path, Any]],
    study_uid: str | None,
    *,
    wait: float,
    show_progress: bool,
) -> dict[str, Any]:
    files = [[path.name, info.size, info.sha256, info.kind.value] for path, info in entries]
    declared = json.dumps({"kind": kind, "study_uid": study_uid, "files": files}).encode()
    header = len(declared).to_bytes(4, "big") + declared
    total = sum(info.size for _, info in entries)
    progress = Progress(f"{kind} -> {peer}", total, enabled=None if show_progress else False)
    query = transfer_query(peer, wait)
    try:
        status, body = target.json(
            "POST",
            query,
            body=_stream(header, [p for p, _ in entries], progress),
            length=len(header) + total,
            timeout=wait + 60.0,
        )
    finally:
        progress.close()
    if status >= 400 and status != 422:
        usage = usage_refusal(status, body)
        raise ApiError(target.url + "/v1/transfers", error_message(status, body), status=status, usage=usage)
    body["waited"] = wait
    return body


def run(args: argparse.Namespace) -> int:
    from qlinkmed.qlinkd.content import collect_paths, group_studies
    from qlinkmed.qlinkd.errors import ContentError

    try:
        target = data_target(args)
    except TargetError as exc:
        print(f"qlink send: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        paths = collect_paths(args.paths)
        limits = daemon_limits(target)
        checked = [(path, check_file(path, limits)[1]) for path in paths]
        names: dict[str, Path] = {}
        for path, _ in checked:
            if path.name in names:
                raise ContentError(str(path), f"has the same name as {names[path.name]}; rename one")
            names[path.name] = path
        dicom = [(p, i) for p, i in checked if i.kind.value == "dicom"]
        images = [(p, i) for p, i in checked if i.kind.value in ("png", "jpeg")]
        ehr = [(p, i) for p, i in checked if i.kind.value in ("fhir", "hl7")]
        if ehr:
            raise ContentError(str(ehr[0][0]), "is an EHR message: send it with `qlink ehr send`")
        by_name = {p.name: p for p, _ in dicom}
        groups = group_studies([(p.name, i) for p, i in dicom])
    except ContentError as exc:
        print(f"qlink send: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"qlink send: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    jobs: list[tuple[str, list[tuple[Path, Any]], str | None]] = []
    for group in groups:
        members = [(by_name[name], info) for name, info in zip(group.names, group.infos, strict=True)]
        jobs.append(("study", members, group.study_uid))
    if images:
        jobs.append(("images", images, None))
    worst = EXIT_OK
    for kind, entries, study_uid in jobs:
        try:
            result = upload(
                target,
                args.to,
                kind,
                entries,
                study_uid,
                wait=wait_seconds(args),
                show_progress=not args.json,
            )
        except ApiError as exc:
            print(unreachable("qlinkd", exc), file=sys.stderr)
            return EXIT_USAGE if exc.usage else EXIT_FAILURE
        print(json.dumps(result) if args.json else describe(result))
        worst = max(worst, exit_code(result))
    return worst
