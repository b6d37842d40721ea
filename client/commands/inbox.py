"""`qlink inbox list|fetch`: what peers delivered to this facility, and fetching it. Delivered files are
kept at rest in cipher-image form (images) or under AES-256-GCM; fetching decrypts them, checks each
against the manifest's SHA-256, and writes them under OUT/<transfer id>/, rebuilding the tree the sender
sent ("SE1/IM1" becomes OUT/<id>/SE1/IM1).

Names are kept as sent (spaces, "+", non-ASCII) once they pass the manifest's rules again here
(`manifest.check_name`: relative, no "..", no control characters); a name the rules or the file system
refuse (too long in bytes, an encoding it cannot store) becomes file-<index> with the original extension.
An existing OUT/<transfer id> is refused unless --overwrite is given; then files already there are
replaced (each written beside its place and renamed over it) and folders reused, but a symbolic link on
the way is refused, so a fetch never writes outside OUT/<transfer id>."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..daemon_http import ApiError, TargetError, unreachable
from ..data_http import DataTarget, error_message
from ..progress import Progress
from .user import add_user_token, user_target

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_SAFE_EXTENSION_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class FetchError(Exception):
    """A file cannot be written where its name says (the message names it and why)."""


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="inbox_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="transfers received from peers (those your roles let you see)")
    add_user_token(listing)
    listing.add_argument("--json", action="store_true")
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
        return f"inbox of {body.get('facility')}: empty"
    lines = [f"inbox of {body.get('facility')}:"]
    for r in rows:
        state = r["state"]
        if state == "receiving":
            state = f"receiving {r['received_bytes']:,}/{r['bytes']:,} bytes"
        fetched = ", fetched" if r.get("fetched_at") else ""
        lines.append(
            f"  {r['transfer_id']}  {r['kind']:<6} from {r['from']:<12} {r['files']:>5} file(s) "
            f"{r['bytes']:>14,} bytes  {state}  {_when(r.get('delivered_at'))}"
            f"  at rest: {r.get('at_rest') or '-'}{fetched}"
        )
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    target = _target(args, "list")
    if isinstance(target, int):
        return target
    try:
        status, body = target.json("GET", "/v1/inbox")
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"qlink inbox list: {_refusal(status, body)}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(body) if args.json else format_inbox(body))
    return EXIT_OK


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
    tid = args.transfer_id
    try:
        status, entry = target.json("GET", f"/v1/inbox/{tid}")
        if status != 200:
            print(f"qlink inbox fetch: {_refusal(status, entry)}", file=sys.stderr)
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
                print(f"qlink inbox fetch: {name}: HTTP {status}", file=sys.stderr)
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
