"""`qlink send --to FACILITY PATH...`: queue DICOM studies and PNG/JPEG images for a peer facility.

Files are checked here first (so a bad file is named before anything is uploaded: its size against the
daemon's limits for its kind, from GET /v1/limits, then its content), grouped into one
transfer per DICOM study (every instance sharing a StudyInstanceUID; objects without one by PatientID and
folder) plus one for the PNG/JPEG images, and streamed to the local daemon, which checks them again,
writes them to its durable outbox and sends them sealed with QKD-derived keys. By default the command
waits until the peer confirms delivery.

A directory travels as its tree: each file under its path relative to the directory ("SE1/IM1"), so a CD
export whose series repeat file names is one send, and `qlink inbox fetch` rebuilds the tree. What a
directory holds besides content (hidden files, DICOMDIR, README.txt, AUTORUN.INF, a viewer) is skipped and
reported on stderr, one line each; a directory with nothing to send is an error (exit 2). A file the user
names directly is never skipped: if it is not content, the send fails naming it. A file that looks like
content but is cut short or corrupt fails the send wherever it is (sending the rest of a study would lose
an instance silently).
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
    from qlinkmed.qlinkd.content import ContentInfo, Found, Skipped, StudyGroup
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


def check_file(path: Path, limits: ContentLimits, name: str | None = None) -> tuple[bytes, ContentInfo]:
    """(bytes, info) of a file that passes its kind's size limit, checked from its size and first bytes
    before it is read whole, and validation. `name` is what it travels as (default: its bare name).
    ContentError (with the message the daemon would give) or OSError."""
    from qlinkmed.qlinkd.content import validate
    from qlinkmed.qlinkd.content.limits import HEAD_BYTES, check_size

    name = path.name if name is None else name
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        check_size(name, handle.read(HEAD_BYTES), size, limits)
        handle.seek(0)
        data = handle.read()
    return data, validate(name, data, limits)


def _not_content(problem: str) -> str | None:
    """Why a file found in a directory is skipped rather than fatal, or None when it is content (good or
    bad) and must be sent or refused."""
    from qlinkmed.qlinkd.content import UNKNOWN_KIND

    if problem == UNKNOWN_KIND:
        return "not DICOM, PNG or JPEG"
    if problem == "empty file":
        return "empty file"
    if problem.startswith(("JSON object without", "invalid JSON")):
        return "not DICOM, PNG or JPEG (JSON)"
    return None


def _may_be_content(path: Path) -> bool:
    """Whether a file's first bytes could start any kind qlink carries (a binary kind, JSON or HL7)."""
    from qlinkmed.qlinkd.content.limits import HEAD_BYTES, is_binary_kind

    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    return not head or is_binary_kind(head) or text.startswith((b"{", b"MSH", b"\x0b"))


def check_files(
    found: list[Found], limits: ContentLimits
) -> tuple[list[tuple[Found, ContentInfo]], list[Skipped]]:
    """Each file's info, and the files found in a directory that hold no content to send (each with its
    reason). ContentError for a bad file or a file named directly that is not content."""
    from qlinkmed.qlinkd.content import ContentKind, Skipped
    from qlinkmed.qlinkd.dataplane.manifest import check_name
    from qlinkmed.qlinkd.errors import ContentError

    checked: list[tuple[Found, ContentInfo]] = []
    skipped: list[Skipped] = []
    for item in found:
        problem = check_name(item.name)
        if problem is not None:
            raise ContentError(str(item.path), f"cannot travel under this name: {problem}")
        if item.in_folder and not _may_be_content(item.path):
            # Judged from the first bytes: a viewer's executables on a CD are not read whole, nor held to
            # the EHR size limit that anything not binary content is.
            skipped.append(Skipped(item.path, "not DICOM, PNG or JPEG"))
            continue
        try:
            info = check_file(item.path, limits, item.name)[1]
        except ContentError as exc:
            reason = _not_content(exc.problem) if item.in_folder else None
            if reason is None:
                raise
            skipped.append(Skipped(item.path, reason))
            continue
        if info.kind in (ContentKind.FHIR, ContentKind.HL7):
            if not item.in_folder:
                raise ContentError(item.name, "is an EHR message: send it with `qlink ehr send`")
            skipped.append(Skipped(item.path, "an EHR message (send it with `qlink ehr send`)"))
            continue
        checked.append((item, info))
    return checked, skipped


def _unique(entries: list[tuple[Found, ContentInfo]]) -> None:
    """ContentError if two files of one transfer would travel under names that clash."""
    from qlinkmed.qlinkd.dataplane.manifest import check_names
    from qlinkmed.qlinkd.errors import ContentError

    clash = check_names([found.name for found, _ in entries])
    if clash is not None:
        index, problem = clash
        raise ContentError(str(entries[index][0].path), f"{problem}; send them separately or rename one")


def grouping_note(group: StudyGroup) -> str:
    """How a group was made, for the person sending it."""
    from qlinkmed.qlinkd.content.studies import BY_STUDY

    if group.grouped_by == BY_STUDY:
        return f"study {group.study_uid}"
    where = f"folder {group.folder!r}" if group.folder else "the top folder"
    return f"{group.instances} object(s) without StudyInstanceUID, grouped by PatientID in {where}"


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
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Stream `entries` (path, info) to the daemon as one transfer; each file travels under its entry in
    `names` (default: its bare name)."""
    travel = names if names is not None else [path.name for path, _ in entries]
    files = [
        [name, info.size, info.sha256, info.kind.value]
        for name, (_, info) in zip(travel, entries, strict=True)
    ]
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
    from qlinkmed.qlinkd.content import collect_files, group_studies
    from qlinkmed.qlinkd.errors import ContentError

    try:
        target = data_target(args)
    except TargetError as exc:
        print(f"qlink send: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        found, skipped = collect_files(args.paths)
        limits = daemon_limits(target)
        checked, not_content = check_files(found, limits)
        skipped += not_content
        for item in skipped:
            print(f"qlink send: skipped {item.path}: {item.reason}", file=sys.stderr)
        if not checked:
            given = ", ".join(str(p) for p in args.paths)
            print(
                f"qlink send: error: nothing to send in {given}: no DICOM, PNG or JPEG file "
                f"({len(skipped)} file(s) skipped)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        dicom = [(f, i) for f, i in checked if i.kind.value == "dicom"]
        images = [(f, i) for f, i in checked if i.kind.value in ("png", "jpeg")]
        # Two directories may hold the same relative name: only within one transfer must names differ.
        by_key = {(f.name, i.sop_instance_uid): f for f, i in dicom}
        groups = group_studies([(f.name, i) for f, i in dicom])
        jobs: list[tuple[str, list[tuple[Found, Any]], str | None, str | None]] = []
        for group in groups:
            members = [
                (by_key[name, info.sop_instance_uid], info)
                for name, info in zip(group.names, group.infos, strict=True)
            ]
            _unique(members)
            jobs.append(("study", members, group.study_uid, grouping_note(group)))
        if images:
            _unique(images)
            jobs.append(("images", images, None, None))
    except ContentError as exc:
        print(f"qlink send: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"qlink send: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    if skipped:
        print(f"qlink send: {len(skipped)} file(s) skipped, {len(checked)} to send", file=sys.stderr)
    worst = EXIT_OK
    for kind, entries, study_uid, note in jobs:
        try:
            result = upload(
                target,
                args.to,
                kind,
                [(found.path, info) for found, info in entries],
                study_uid,
                wait=wait_seconds(args),
                show_progress=not args.json,
                names=[found.name for found, _ in entries],
            )
        except ApiError as exc:
            print(unreachable("qlinkd", exc), file=sys.stderr)
            return EXIT_USAGE if exc.usage else EXIT_FAILURE
        if note is not None:
            result["grouped_as"] = note
        if args.json:
            print(json.dumps(result))
        else:
            print(describe(result) + (f" [{note}]" if note else ""))
        worst = max(worst, exit_code(result))
    return worst
