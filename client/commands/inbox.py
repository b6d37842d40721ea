"""`qlink inbox list|fetch`: what peers delivered to this facility, and fetching it. Delivered files are
kept at rest in cipher-image form (images), under AES-256-GCM, or (EHR messages) in the quantum
one-time-pad form whose pad is in the key store; fetching decrypts them, checks each
against the manifest's SHA-256, and writes them under OUT/<transfer id>/, rebuilding the tree the sender
sent ("SE1/IM1" becomes OUT/<id>/SE1/IM1).

Names are kept as sent (spaces, "+", non-ASCII) once they pass the manifest's rules again here
(`manifest.check_name`: relative, no "..", no control characters); a name the rules or the file system
refuse (too long in bytes, an encoding it cannot store) becomes file-<index> with the original extension.
An existing OUT/<transfer id> is refused unless --overwrite is given; then files already there are
replaced (each written beside its place and renamed over it) and folders reused, but a symbolic link on
the way is refused, so a fetch never writes outside OUT/<transfer id>. A transfer may be named by the
start of its ID (the listing shows eight characters) when no other transfer starts the same way.

`list` shows, per transfer, who sent it and when, the patient (name and ID), and for a study its
accession number, modalities, study date, description and instance count, for an EHR message its type
(HL7 MSH-9, FHIR resourceType and Bundle type) and sender (HL7 MSH-3@MSH-4), and the department the
facility's `[departments]` rules named (a DEPT column when any row has one). The daemon extracted these
once, on arrival; filters (--patient, --accession, --modality, --kind, --peer, --department, --since,
--until, --unfetched, --limit) are applied by its database. The text table fits 100 columns (long values
are cut with "…"); --json has every field in full."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from qlinkmed.qlinkd.dataplane.inbox_filter import DEFAULT_LIMIT, parse_filter
from qlinkmed.qlinkd.errors import FilterError

from ..daemon_http import ApiError, TargetError, unreachable
from ..data_http import DataTarget, error_message
from ..progress import Progress
from .user import add_user_token, user_target

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_FILTER_OPTIONS = (
    "patient",
    "accession",
    "modality",
    "kind",
    "peer",
    "department",
    "since",
    "until",
    "limit",
)
_SAFE_EXTENSION_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class FetchError(Exception):
    """A file cannot be written where its name says (the message names it and why)."""


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="inbox_command", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", help="transfers received from peers, newest first (those your roles let you see)"
    )
    add_user_token(listing)
    listing.add_argument("--patient", metavar="TEXT", help="part of the patient's name or ID (any case)")
    listing.add_argument("--accession", metavar="NUMBER", help="a study's accession number, exactly")
    listing.add_argument("--modality", metavar="CODE", help="studies with this modality (CT, MR...)")
    listing.add_argument("--kind", metavar="KIND", help="study | images | ehr")
    listing.add_argument("--peer", metavar="FACILITY", help="sent by this facility")
    listing.add_argument(
        "--department", metavar="NAME", help="for this department ([departments]), exactly but in any case"
    )
    listing.add_argument(
        "--since",
        metavar="WHEN",
        help="arrived since: ISO date or date-time (local), or a span back (2h, 3d)",
    )
    listing.add_argument("--until", metavar="WHEN", help="arrived before (same forms as --since)")
    listing.add_argument("--unfetched", action="store_true", help="delivered and never fetched")
    listing.add_argument("--limit", metavar="N", help=f"at most N transfers (default {DEFAULT_LIMIT})")
    listing.add_argument("--json", action="store_true", help="every field, in full")
    listing.set_defaults(run=run_list)
    fetch = sub.add_parser("fetch", help="write a delivered transfer's files to a directory")
    fetch.add_argument("transfer_id", metavar="TRANSFER_ID")
    fetch.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="default: .")
    fetch.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing DIR/TRANSFER_ID, replacing files already there",
    )
    add_user_token(fetch)
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(run=run_fetch)


def _target(args: argparse.Namespace, command: str) -> DataTarget | int:
    try:
        return user_target(args)
    except TargetError as exc:
        print(f"qlink inbox {command}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def cut(text: str | None, width: int) -> str:
    """`text` in at most `width` characters, cut with "…" (None and "" as "-")."""
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


_COLUMNS = (("ID", 8), ("ARRIVED", 11), ("FROM", 10), ("PATIENT", 24), ("ACCESSION", 10), ("DETAIL", 18))
"""The text table: (heading, width), then N (4, right-aligned) and STATE; 100 columns in all."""
_WITH_DEPARTMENT = (
    ("ID", 8),
    ("ARRIVED", 11),
    ("FROM", 10),
    ("DEPT", 10),
    ("PATIENT", 19),
    ("ACCESSION", 10),
    ("DETAIL", 12),
)
"""The same with the department, when any row names one: the patient and detail give up its room."""


def _patient(row: dict[str, Any], width: int) -> str | None:
    name, pid = row.get("patient_name"), row.get("patient_id")
    if name and pid:
        # The ID is what identifies the patient: a long name is cut first, the ID only when it is long.
        room = width - len(pid) - 3
        if room >= 4:
            return f"{cut(name, room)} ({pid})"
        return f"{cut(name, 6)} ({cut(pid, width - 6 - 3)})"
    return name or pid


def _detail(row: dict[str, Any]) -> str:
    if row.get("kind") == "study":
        parts = [" ".join(row.get("modalities") or []), row.get("study_date"), row.get("study_description")]
    elif row.get("kind") == "ehr":
        # MSH-9's code and trigger event ("ORU^R01"); --json has it whole ("ORU^R01^ORU_R01").
        kind = "^".join(str(row.get("message_type") or "").split("^")[:2])
        parts = [kind, row.get("sender") and f"from {row['sender']}"]
    else:
        parts = [row.get("kind")]
    return " ".join(p for p in parts if p)


def _state(row: dict[str, Any]) -> str:
    state = str(row["state"])
    if row.get("purged_at"):
        return "purged"
    if state == "receiving":
        done = row.get("received_bytes", 0) / row["bytes"] if row.get("bytes") else 0.0
        return f"rcv {done:.0%}"
    if state == "delivered":
        return "fetched" if row.get("fetched_at") else "new"
    return state


def _refusal(status: int, body: Any) -> str:
    # A policy refusal says why in plain words, one reason per role: show them all.
    reasons = body.get("reasons") if isinstance(body, dict) else None
    return error_message(status, body) + "".join(f"\n  {r}" for r in reasons or [])


def format_inbox(body: dict[str, Any]) -> str:
    rows = body.get("inbox", [])
    hidden = body.get("hidden") or 0
    if hidden:
        return format_inbox({**body, "hidden": 0}) + f"\n  {hidden} more hidden: your roles do not allow them"
    if not rows:
        return f"inbox of {body.get('facility')}: nothing matches"
    columns = _WITH_DEPARTMENT if any(r.get("department") for r in rows) else _COLUMNS
    width = dict(columns)
    head = " ".join(f"{h:<{w}}" for h, w in columns) + f" {'N':>4} STATE"
    lines = [f"inbox of {body.get('facility')}: {len(rows)} transfer(s), newest first", head]
    for r in rows:
        arrived = r.get("delivered_at") or r.get("started_at")
        stamp = datetime.datetime.fromtimestamp(arrived).strftime("%m-%d %H:%M") if arrived else "-"
        count = r.get("instances") if r.get("kind") == "study" and r.get("instances") else r.get("files")
        accession = r.get("accession")
        cells = [
            str(r["transfer_id"])[:8],
            stamp,
            cut(r.get("from"), 10),
            *([cut(r.get("department"), width["DEPT"])] if "DEPT" in width else []),
            cut(_patient(r, width["PATIENT"]), width["PATIENT"]),
            cut(accession, 10),
            cut(_detail(r), width["DETAIL"]),
        ]
        widths = [w for _, w in columns]
        if r.get("kind") != "study":  # no accession number: the detail takes its place too
            both = width["ACCESSION"] + 1 + width["DETAIL"]
            cells[-2:] = [cut(_detail(r), both)]
            widths[-2:] = [both]
        line = " ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True))
        lines.append(f"{line} {count if count is not None else '-':>4} {_state(r)}")
    return "\n".join(lines)


def list_query(args: argparse.Namespace) -> str:
    """The query string of GET /v1/inbox for the options given; FilterError naming a bad one (checked here
    as the daemon will, so a typo exits 2 before any request)."""
    given = {name: getattr(args, name) for name in _FILTER_OPTIONS if getattr(args, name) is not None}
    if args.unfetched:
        given["unfetched"] = "true"
    parse_filter(given, time.time())
    return urllib.parse.urlencode(given)


def run_list(args: argparse.Namespace) -> int:
    try:
        query = list_query(args)
    except FilterError as exc:
        print(f"qlink inbox list: error: --{exc.option}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    target = _target(args, "list")
    if isinstance(target, int):
        return target
    try:
        status, body = target.json("GET", "/v1/inbox" + (f"?{query}" if query else ""))
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE
    if status == 400 and isinstance(body, dict) and body.get("field"):
        field = str(body["field"])
        message = str(body.get("message", "")).removeprefix(f"{field}: ")
        print(f"qlink inbox list: error: --{field}: {message}", file=sys.stderr)
        return EXIT_USAGE
    if status != 200:
        print(f"qlink inbox list: {_refusal(status, body)}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(body) if args.json else format_inbox(body))
    return EXIT_OK


def resolve_id(target: DataTarget, given: str) -> tuple[str | None, str | None]:
    """(the transfer ID `given` names, None) or (None, why not): a whole ID as it is, or the start of
    exactly one transfer's ID."""
    if len(given) == 36:
        return given, None
    try:
        parse_filter({"id": given}, time.time())
    except FilterError:
        return given, None  # not an ID's start: the daemon answers for it
    status, body = target.json("GET", "/v1/inbox?" + urllib.parse.urlencode({"id": given, "limit": "2"}))
    if status != 200:
        return None, error_message(status, body)
    found = [str(r["transfer_id"]) for r in body.get("inbox", [])]
    if len(found) != 1:
        return None, f"{len(found) or 'no'} transfer(s) start with {given!r}; give more of the ID"
    return found[0], None


def fallback_name(index: int, name: str) -> str:
    """file-<index> with the original extension (when it is a plain one): what a name the rules or the
    file system refuse is written as."""
    base = name.rsplit("/", 1)[-1]
    extension = base.rsplit(".", 1)[1] if "." in base[1:] else ""
    keep = 0 < len(extension) <= 16 and set(extension) <= _SAFE_EXTENSION_CHARACTERS
    return f"file-{index:05d}" + (f".{extension}" if keep else "")


def _folders(root: Path, relative: str) -> Path:
    """Make the folders of `relative` under `root` (mode 0700); FetchError if one of them is a symbolic
    link or not a folder. Returns the file's parent folder."""
    folder = root
    for part in relative.split("/")[:-1]:
        folder = folder / part
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if folder.is_symlink() or not folder.is_dir():
                raise FetchError(
                    f"{folder} is a symbolic link or not a folder; refusing to write through it"
                ) from None
    return folder


def write_file(root: Path, relative: str, data: bytes, *, overwrite: bool) -> Path:
    """Write `data` at `root`/`relative` (a name that passed `check_name`); never follows a link. OSError
    from the file system as it is; FileExistsError when the file exists and `overwrite` is off."""
    path = _folders(root, relative) / relative.rsplit("/", 1)[-1]
    target = path if not overwrite else path.with_name(f".qlink-partial-{os.getpid()}-{path.name}"[:255])
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(target, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if overwrite:
            os.replace(target, path)  # replaces a file or a link itself, never a link's target
    except BaseException:
        if overwrite:
            target.unlink(missing_ok=True)
        raise
    return path


def run_fetch(args: argparse.Namespace) -> int:
    import errno
    import hashlib

    from qlinkmed.qlinkd.dataplane.manifest import check_name

    target = _target(args, "fetch")
    if isinstance(target, int):
        return target
    try:
        tid, problem = resolve_id(target, args.transfer_id)
        if tid is None:
            print(f"qlink inbox fetch: {problem}", file=sys.stderr)
            return EXIT_FAILURE
        status, entry = target.json("GET", f"/v1/inbox/{tid}")
        if status != 200:
            print(f"qlink inbox fetch: {_refusal(status, entry)}", file=sys.stderr)
            return EXIT_FAILURE
        if entry.get("purged_at"):
            when = _when(entry["purged_at"])
            why = entry.get("purge_reason") or "retention"
            print(
                f"qlink inbox fetch: transfer {tid} was purged at {when} by the inbox retention policy "
                f"({why}); its files are no longer held",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if entry["state"] != "delivered":
            print(f"qlink inbox fetch: transfer {tid} is {entry['state']}, not delivered", file=sys.stderr)
            return EXIT_FAILURE
        folder = args.out / tid
        try:
            folder.mkdir(parents=True, exist_ok=args.overwrite, mode=0o700)
        except FileExistsError:
            print(
                f"qlink inbox fetch: {folder} exists; refusing to overwrite (--overwrite replaces its files)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if folder.is_symlink():
            print(
                f"qlink inbox fetch: {folder} is a symbolic link; refusing to write through it",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        progress = Progress(f"fetch {tid[:8]}", entry["bytes"], enabled=None if not args.json else False)
        written = []
        for f in entry["file_list"]:
            # The name came from the peer: the daemon has checked it, and so do we (an older daemon).
            sent = str(f["name"])
            name = sent if check_name(sent) is None else fallback_name(f["index"], sent)
            status, data, _ = target.request("GET", f"/v1/inbox/{tid}/files/{f['index']}", timeout=120.0)
            if status != 200:
                detail = error_message(status, _json_or_none(data))
                print(f"qlink inbox fetch: {name}: {detail}", file=sys.stderr)
                return EXIT_FAILURE
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                print(f"qlink inbox fetch: {name}: SHA-256 differs from the manifest", file=sys.stderr)
                return EXIT_FAILURE
            try:
                try:
                    path = write_file(folder, name, data, overwrite=args.overwrite)
                except OSError as exc:
                    # A name this file system cannot hold (too long in bytes, or an encoding it refuses).
                    if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
                        raise
                    name = fallback_name(f["index"], sent)
                    path = write_file(folder, name, data, overwrite=args.overwrite)
            except FileExistsError:
                print(f"qlink inbox fetch: {folder / name} exists; refusing to overwrite", file=sys.stderr)
                return EXIT_FAILURE
            except (FetchError, OSError) as exc:
                print(f"qlink inbox fetch: {name}: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            written.append(
                {"name": name, "sent_as": sent, "path": str(path), "size": len(data), "sha256": f["sha256"]}
            )
            progress.advance(len(data))
        progress.close()
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE
    result = {"transfer_id": tid, "directory": str(folder), "files": written, "verified": "sha256"}
    if args.json:
        print(json.dumps(result))
    else:
        total = sum(w["size"] for w in written)
        renamed = sum(w["name"] != w["sent_as"] for w in written)
        note = f"; {renamed} renamed file-<index> (names this file system cannot hold)" if renamed else ""
        print(f"fetched {len(written)} file(s), {total:,} bytes, into {folder} (each SHA-256 verified){note}")
    return EXIT_OK


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
