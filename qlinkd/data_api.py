"""The data endpoints of the daemon's local API: queue studies, images and EHR messages for a peer, list
the outbox and the inbox, fetch delivered files. They carry patient data, so unlike /v1/status they need a
bearer token. Sending and the outbox take the facility token in ``state_dir/local-api.token`` (mode 0600:
the daemon's user, or whoever the operator lets read it). Reading the inbox takes a user's token
(`qlink user add`): each read is decided by the user's roles (``access.policy``) and audited with the
user; the facility token reads no patient data.

Upload body (POST /v1/transfers): a 4-byte big-endian length, a JSON object {"kind", "study_uid",
"files": [[name, size, sha256, content], ...]}, then every file's bytes in that order. The daemon checks
each file's size, SHA-256 and content as it arrives, writes it to the outbox and fsyncs it; only then
does it answer "queued".

Sizes are bounded before bytes are read (content.limits): a file the manifest declares larger than its
kind's limit, or an EHR body over `max_ehr_bytes`, is answered 413 with a JSON message naming the file and
the limit. Content is validated in the daemon's worker processes (content.worker), never on the event
loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from qlinkmed.qlinkd.access.api import active_user, bearer, is_facility_token
from qlinkmed.qlinkd.access.gate_service import Gate
from qlinkmed.qlinkd.access.policy import User
from qlinkmed.qlinkd.access.service import Access, attributes_of, attributes_of_entry
from qlinkmed.qlinkd.content.limits import too_large
from qlinkmed.qlinkd.content.summary import MODALITY_SEPARATOR, InboxSummary
from qlinkmed.qlinkd.content.worker import ContentValidator, FileSlice
from qlinkmed.qlinkd.dataplane.inbox_filter import parse_filter
from qlinkmed.qlinkd.dataplane.manifest import MAX_MANIFEST_BYTES, FileEntry, Manifest, TransferKind
from qlinkmed.qlinkd.dataplane.outbox import Upload
from qlinkmed.qlinkd.dataplane.records import InboxEntry, IncomingRecord, OutgoingRecord
from qlinkmed.qlinkd.dataplane.service import DataPlane
from qlinkmed.qlinkd.errors import ContentError, FilterError, IntegrityError, TransferError
from qlinkmed.qlinkd.ops import entropy

log = logging.getLogger("qlink.api")

TOKEN_FILE = "local-api.token"
READ_BLOCK = 1 << 20
MAX_WAIT_S = 600.0
FACILITY_READS = "the facility token sends; reading the inbox needs a user token: qlink user add"
_KIND_CONTENT = {
    TransferKind.STUDY: {"dicom"},
    TransferKind.IMAGES: {"png", "jpeg"},
    TransferKind.EHR: {"fhir", "hl7"},
}


def ensure_token(state_dir: Path) -> str:
    """The local API token, created (0600) on first start."""
    return entropy.bearer_token(state_dir / TOKEN_FILE)


def _error(status: type[web.HTTPException], message: str, *, field: str | None = None) -> web.HTTPException:
    # `field` names the request parameter at fault, so a client can tell a usage error from a refusal.
    body = {"message": message} if field is None else {"message": message, "field": field}
    return status(text=json.dumps(body), content_type="application/json")


def _too_large(error: ContentError, limit: int) -> web.HTTPException:
    body = json.dumps({"message": str(error), "limit_bytes": limit})
    return web.HTTPRequestEntityTooLarge(limit, text=body, content_type="application/json")


def _outgoing_json(record: OutgoingRecord) -> dict[str, Any]:
    m = record.manifest
    return {
        "transfer_id": m.transfer_id,
        "to": m.recipient,
        "kind": m.kind.value,
        "files": len(m.files),
        "bytes": m.total_bytes,
        "state": record.state.value,
        "queued_at": record.queued_at,
        "finished_at": record.finished_at,
        "reason": record.reason,
    }


_FILTERS = (
    "patient",
    "accession",
    "modality",
    "kind",
    "peer",
    "department",
    "since",
    "until",
    "unfetched",
    "id",
    "limit",
)
"""GET /v1/inbox's query parameters (`dataplane.inbox_filter`)."""


def _summary_json(summary: InboxSummary | None) -> dict[str, Any]:
    s = summary or InboxSummary()
    return {
        "patient_name": s.patient_name,
        "patient_id": s.patient_id,
        "accession": s.accession,
        "modalities": s.modalities.split(MODALITY_SEPARATOR) if s.modalities else [],
        "study_date": s.study_date,
        "study_description": s.study_description,
        "instances": s.instances,
        "message_type": s.message_type,
        "sender": s.sender,
        "department": s.department,
    }


def _entry_json(entry: InboxEntry) -> dict[str, Any]:
    return {
        "transfer_id": entry.transfer_id,
        "from": entry.peer,
        "kind": entry.kind,
        "files": entry.files,
        "bytes": entry.bytes,
        "state": entry.state.value,
        "received_bytes": entry.received_bytes,
        "started_at": entry.started_at,
        "delivered_at": entry.delivered_at,
        "at_rest": entry.forms,
        "fetched_at": entry.fetched_at,
        "reason": entry.reason,
        "purged_at": entry.purged_at,
        "purge_reason": entry.purge_reason,
        **_summary_json(entry.summary),
    }


def _purged_message(transfer_id: str, when: float, why: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))
    return f"transfer {transfer_id} was purged at {stamp} by the inbox retention policy ({why})"


def _incoming_json(
    record: IncomingRecord, *, files: bool = False, summary: InboxSummary | None = None
) -> dict[str, Any]:
    m = record.manifest
    body: dict[str, Any] = {
        "transfer_id": m.transfer_id,
        "from": m.sender,
        "kind": m.kind.value,
        "study_uid": m.study_uid,
        "files": len(m.files),
        "bytes": m.total_bytes,
        "state": record.state.value,
        "received_bytes": sum(f.size for f in m.files[: record.file_index]) + record.file_offset,
        "delivered_at": record.delivered_at,
        "started_at": record.started_at,
        "spooled_at": record.spooled_at,
        "at_rest": record.forms,
        "fetched_at": record.fetched_at,
        "reason": record.reason,
        "manifest_sha256": m.sha256(),
        "purged_at": record.purged_at,
        "purge_reason": record.purge_reason,
        **_summary_json(summary),
    }
    if files:
        body["file_list"] = [
            {"index": i, "name": f.name, "size": f.size, "sha256": f.sha256, "content": f.content}
            for i, f in enumerate(m.files)
        ]
    return body


def add_data_routes(
    app: web.Application,
    plane: DataPlane,
    token: str,
    validator: ContentValidator,
    access: Access | None = None,
    gate: Gate | None = None,
) -> None:
    limits = validator.limits

    def authorise(request: web.Request) -> None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise _error(web.HTTPUnauthorized, f"data endpoints need the bearer token in {TOKEN_FILE}")

    def reader(request: web.Request) -> tuple[Access, User]:
        """The user reading the inbox. The facility token is refused by name: it sends, it does not read."""
        given = bearer(request)
        if is_facility_token(given, token):
            raise _error(web.HTTPForbidden, FACILITY_READS)
        if access is None:
            raise _error(web.HTTPForbidden, "this daemon has no user store; the inbox cannot be read")
        return access, active_user(access, given)

    def permit(
        users: Access,
        user: User,
        record: IncomingRecord,
        file: int | None = None,
        *,
        summary: InboxSummary | None = None,
    ) -> None:
        if summary is None:
            summary = plane.records.summary(record.manifest.transfer_id)
        data = attributes_of(record, summary)
        decision = users.check_read(user, data, file=file)
        outcome = (
            None
            if gate is None
            else gate.check(user, data, volume=record.manifest.total_bytes, allowed_by_roles=decision.allow)
        )
        if not decision.allow:
            refusal = {
                "message": f"user {user.name} may not read this transfer",
                "reasons": list(decision.reasons),
            }
            raise web.HTTPForbidden(text=json.dumps(refusal), content_type="application/json")
        if outcome is not None and outcome.refused and outcome.assessment is not None:
            judged = outcome.assessment
            body: dict[str, object] = {
                "message": outcome.message,
                "reasons": list(judged.reasons),
                "gate": {"decision": judged.decision.value, "score": judged.probability},
            }
            raise web.HTTPForbidden(text=json.dumps(body), content_type="application/json")

    def peer_of(request: web.Request) -> str:
        peer = request.query.get("to", "")
        if not plane.peer_known(peer):
            raise _error(web.HTTPBadRequest, f"unknown peer {peer!r} (to=FACILITY)", field="to")
        return peer

    def wait_of(request: web.Request) -> float:
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            raise _error(web.HTTPBadRequest, "wait must be a number of seconds", field="wait") from None
        if not 0 <= wait <= MAX_WAIT_S:
            raise _error(web.HTTPBadRequest, f"wait must be in 0..{MAX_WAIT_S:g} s", field="wait")
        return wait

    async def queue_and_answer(
        upload: Upload | tuple[Manifest, bytes], started: float, wait: float
    ) -> web.Response:
        try:
            if isinstance(upload, Upload):
                manifest = upload.manifest
                outcome_future = plane.queue(upload)
            else:
                manifest = upload[0]
                outcome_future = plane.queue_ehr(*upload)
        except (OSError, TransferError) as exc:
            if isinstance(upload, Upload):
                upload.abandon()
            raise _error(web.HTTPInternalServerError, f"cannot queue: {exc}") from None
        queued = time.monotonic()
        body: dict[str, Any] = {
            "transfer_id": manifest.transfer_id,
            "to": manifest.recipient,
            "kind": manifest.kind.value,
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "manifest_sha256": manifest.sha256(),
            "state": "queued",
            "queue_seconds": round(queued - started, 6),
        }
        if wait > 0:
            try:
                async with asyncio.timeout(wait):
                    outcome = await asyncio.shield(outcome_future)
            except TimeoutError:
                plane.forget_waiter(manifest.transfer_id)
            else:
                body["state"] = outcome.state.value
                body["reason"] = outcome.reason
                body["seconds"] = round(outcome.finished - started, 6)
                body["transfer_seconds"] = round(outcome.finished - queued, 6)
        else:
            plane.forget_waiter(manifest.transfer_id)
        status = 200 if body["state"] == "delivered" else 202
        if body["state"] == "refused":
            status = 422
        return web.json_response(body, status=status)

    def check_declared_size(entry: FileEntry) -> None:
        ehr = entry.content in _KIND_CONTENT[TransferKind.EHR]
        limit = limits.max_ehr_bytes if ehr else limits.max_file_bytes
        if entry.size > limit:
            what = "an EHR message (FHIR JSON or HL7 v2)" if ehr else "a DICOM, PNG or JPEG file"
            raise _too_large(too_large(entry.name, entry.size, limit, what), limit)

    async def check_content(upload: Upload, index: int, entry: FileEntry, study_uid: str | None) -> None:
        source = FileSlice(str(upload.file_path(index)), 0, entry.size)
        info = await validator.validate(entry.name, source)
        if info.kind.value != entry.content:
            raise ContentError(entry.name, f"declared {entry.content}, the content is {info.kind.value}")
        if study_uid is not None and getattr(info, "study_uid", None) != study_uid:
            raise ContentError(
                entry.name, f"belongs to study {getattr(info, 'study_uid', None)}, not {study_uid}"
            )

    async def post_transfer(request: web.Request) -> web.Response:
        authorise(request)
        started = time.monotonic()
        peer, wait = peer_of(request), wait_of(request)
        try:
            head = await request.content.readexactly(4)
            size = int.from_bytes(head, "big")
            if size > MAX_MANIFEST_BYTES:
                raise TransferError(f"upload manifest of {size} bytes is too large")
            declared = json.loads(await request.content.readexactly(size))
            kind = TransferKind(declared["kind"])
            if kind is TransferKind.EHR:
                raise TransferError("send EHR messages with POST /v1/ehr")
            files = tuple(FileEntry(str(n), int(s), str(h), str(c)) for n, s, h, c in declared["files"])
            study_uid = declared.get("study_uid")
            for entry in files:
                if entry.content not in _KIND_CONTENT[kind]:
                    raise ContentError(entry.name, f"a {kind.value} transfer cannot carry {entry.content}")
                check_declared_size(entry)
            manifest = plane.new_manifest(peer, kind, files, study_uid)
        except asyncio.IncompleteReadError:
            raise _error(web.HTTPBadRequest, "upload ended inside its manifest") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise _error(web.HTTPBadRequest, f"malformed upload manifest: {exc}") from None
        except (TransferError, ContentError) as exc:
            raise _error(web.HTTPBadRequest, str(exc)) from None
        upload = plane.begin_upload(manifest)
        try:
            for index, entry in enumerate(manifest.files):
                upload.start_file(index)
                left = entry.size
                while left:
                    block = await request.content.read(min(READ_BLOCK, left))
                    if not block:
                        raise TransferError(f"{entry.name}: upload ended after {entry.size - left} bytes")
                    upload.write(block)
                    left -= len(block)
            if not request.content.at_eof() and await request.content.read(1):
                raise TransferError("upload holds more bytes than its files declare")
            upload.commit_files()
            for index, entry in enumerate(manifest.files):
                await check_content(upload, index, entry, study_uid if kind is TransferKind.STUDY else None)
        except (TransferError, ContentError) as exc:
            upload.abandon()
            raise _error(web.HTTPBadRequest, str(exc)) from None
        except BaseException:
            upload.abandon()
            raise
        return await queue_and_answer(upload, started, wait)

    async def read_ehr(request: web.Request, name: str) -> bytes:
        """The body, refused with a JSON 413 naming the message and the limit as soon as it is known to be
        too large (from Content-Length before reading, else once aiohttp's own bound trips)."""
        limit, what = limits.max_ehr_bytes, "an EHR message (FHIR JSON or HL7 v2)"
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _too_large(too_large(name, declared, limit, what), limit)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(
                ContentError(name, f"more than {limit:,} bytes, the limit for {what}"), limit
            ) from None
        if len(body) > limit:
            raise _too_large(too_large(name, len(body), limit, what), limit)
        return body

    async def post_ehr(request: web.Request) -> web.Response:
        authorise(request)
        started = time.monotonic()
        peer, wait = peer_of(request), wait_of(request)
        name = request.query.get("name", "message")
        body = await read_ehr(request, name)
        try:
            info = await validator.validate(name, body)
            if info.kind.value not in _KIND_CONTENT[TransferKind.EHR]:
                raise ContentError(name, f"an EHR message is FHIR JSON or HL7 v2, not {info.kind.value}")
            entry = FileEntry(name, len(body), info.sha256, info.kind.value)
            manifest = plane.new_manifest(peer, TransferKind.EHR, (entry,))
        except ContentError as exc:
            # Every problem validation found, each with where it is (an OperationOutcome's issues).
            issues = [issue.to_fhir() for issue in exc.issues]
            raise web.HTTPBadRequest(
                text=json.dumps({"message": str(exc), "issues": issues}), content_type="application/json"
            ) from None
        except TransferError as exc:
            raise _error(web.HTTPBadRequest, str(exc)) from None
        return await queue_and_answer((manifest, body), started, wait)

    async def get_limits(request: web.Request) -> web.Response:
        authorise(request)
        return web.json_response(limits.to_json())

    async def list_transfers(request: web.Request) -> web.Response:
        authorise(request)
        return web.json_response(
            {
                "facility": plane.facility,
                "senders": plane.sender_states(),
                "transfers": [_outgoing_json(r) for r in plane.records.list_outgoing()],
            }
        )

    async def list_inbox(request: web.Request) -> web.Response:
        users, user = reader(request)
        unknown = sorted(set(request.query) - set(_FILTERS))
        if unknown:
            raise _error(
                web.HTTPBadRequest,
                f"unknown query parameter {unknown[0]!r} (filters: {', '.join(_FILTERS)})",
                field=unknown[0],
            )
        try:
            query = parse_filter({k: request.query.get(k) for k in _FILTERS}, time.time())
        except FilterError as exc:
            raise _error(web.HTTPBadRequest, str(exc), field=exc.option) from None
        entries, hidden = users.visible(
            user, ((attributes_of_entry(e), e) for e in plane.records.list_inbox(query))
        )
        return web.json_response(
            {"facility": plane.facility, "inbox": [_entry_json(e) for e in entries], "hidden": hidden}
        )

    def incoming(request: web.Request) -> IncomingRecord:
        tid = request.match_info["transfer_id"]
        record = plane.records.incoming(tid)
        if record is None:
            raise _error(web.HTTPNotFound, f"no transfer {tid[:80]!r} in the inbox")
        return record

    async def inbox_entry(request: web.Request) -> web.Response:
        users, user = reader(request)
        record = incoming(request)
        summary = plane.records.summary(record.manifest.transfer_id)
        permit(users, user, record, summary=summary)
        return web.json_response(_incoming_json(record, files=True, summary=summary))

    def refuse_purged(transfer_id: str) -> None:
        purged = plane.records.purged(transfer_id)
        if purged is not None:
            raise _error(web.HTTPGone, _purged_message(transfer_id, *purged))

    async def inbox_file(request: web.Request) -> web.Response:
        users, user = reader(request)
        record = incoming(request)
        try:
            index = int(request.match_info["index"])
        except ValueError:
            raise _error(web.HTTPBadRequest, "file index must be an integer") from None
        # Decided before anything else about the transfer is said (a purge included).
        permit(users, user, record, index)
        refuse_purged(record.manifest.transfer_id)
        try:
            located = plane.inbox.locate(record.manifest.transfer_id, index)
            data = await asyncio.to_thread(plane.inbox.open_located, *located)
        except TransferError as exc:
            raise _error(web.HTTPNotFound, exc.message) from None
        except (IntegrityError, ContentError, OSError) as exc:
            refuse_purged(record.manifest.transfer_id)  # purged while it was read
            log.error("inbox %s file %s cannot be opened: %s", record.manifest.transfer_id, index, exc)
            raise _error(
                web.HTTPInternalServerError, f"the at-rest copy fails its integrity check ({exc})"
            ) from None
        if index == len(record.manifest.files) - 1:
            # Fetched means taken whole: `qlink inbox fetch` reads the files in order, so the last one
            # marks it. Marking on the first read let purge-after-fetch remove a study mid-fetch.
            plane.records.mark_fetched(record.manifest.transfer_id)
        entry = record.manifest.files[index]
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-Qlink-SHA256": entry.sha256, "X-Qlink-Name": entry.name.encode().hex()},
        )

    app.router.add_post("/v1/transfers", post_transfer)
    app.router.add_get("/v1/transfers", list_transfers)
    app.router.add_post("/v1/ehr", post_ehr)
    app.router.add_get("/v1/limits", get_limits)
    app.router.add_get("/v1/inbox", list_inbox)
    app.router.add_get("/v1/inbox/{transfer_id}", inbox_entry)
    app.router.add_get("/v1/inbox/{transfer_id}/files/{index}", inbox_file)
