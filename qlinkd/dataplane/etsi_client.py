"""An ETSI GS QKD 014 V1.1.1 client (an SAE): status, enc_keys and dec_keys against an external KME over
HTTPS with mutual TLS. The data plane's side of ``key_source = "etsi014"``; the KME may be real QKD
hardware or another qlinkd (``pool/etsi.py`` is the server side).

Everything the KME answers is untrusted: answers are read up to a bound computed from the request (a
broken or hostile KME cannot make us buffer more), key IDs must be UUIDs, each key must be base64 of
exactly the size asked for, and an answer must hold exactly the keys asked for. Every failure is a
``KmeError`` naming the request and, when the KME answered, its status and ETSI error message;
``KmeUnavailable`` when it could not be reached, timed out or answered 503, which a later try may fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from qlinkmed.qlinkd.errors import KmeError, KmeUnavailable
from qlinkmed.qlinkd.pool.values import DeliveredKey

API_PREFIX = "/api/v1/keys"
REQUEST_TIMEOUT_S = 10.0
"""A whole request (connect, TLS, answer) to the KME."""
SMALL_ANSWER_BYTES = 64 * 1024
"""The most a status or error answer may hold."""
KEY_ENTRY_OVERHEAD_BYTES = 256
"""JSON around one key in a key container: its key_ID, names, quotes and spacing (generous)."""
MAX_KEY_BITS = 1 << 20
"""The largest key a dec_keys answer may hold when the caller knows no tighter bound (qlinkd's own KME
allows no larger)."""
MSG_KEYS_NOT_FOUND = "one or more keys specified are not found on KME"
"""The message ETSI GS QKD 014 mandates when dec_keys cannot return a requested key (with status 400)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KmeStatus:
    """A KME's status object for one master/slave SAE pair (the fields this client relies on)."""

    source_kme_id: str
    target_kme_id: str
    master_sae_id: str
    """The SAE the KME took the caller for (from its certificate); empty if the KME did not say."""
    key_size: int
    """Bits of a key when a request names no size."""
    stored_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int


def _answer_cap(number: int, size_bits: int) -> int:
    """The most a key container of `number` keys of `size_bits` bits may take as JSON."""
    base64_bytes = 4 * -(-(size_bits // 8) // 3)
    return SMALL_ANSWER_BYTES + number * (base64_bytes + KEY_ENTRY_OVERHEAD_BYTES)


def canonical_key_id(value: object) -> str | None:
    """`value` as a canonical UUID string, or None if it is no UUID."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


class EtsiClient:
    """One SAE's connection to its KME at `base_url` (https://host:port), presenting the SAE's client
    certificate and trusting only the CA in `ssl_context`. Open it inside the event loop that uses it;
    `close` it when done."""

    def __init__(
        self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                # No cookies, no proxies from the environment: the KME is named by the configuration alone.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    # ---- the three calls

    async def status(self, slave_sae: str) -> KmeStatus:
        url = f"{self.base_url}{API_PREFIX}/{quote(slave_sae, safe='')}/status"
        body = await self._call("GET", url, None, SMALL_ANSWER_BYTES)
        ints = {}
        for name in ("key_size", "stored_key_count", "max_key_per_request", "max_key_size", "min_key_size"):
            value = body.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise KmeError(f"status field {name} is not a non-negative integer: {value!r}", url=url)
            ints[name] = value
        if not 8 <= ints["min_key_size"] <= ints["max_key_size"] or ints["max_key_per_request"] < 1:
            raise KmeError(
                f"status limits make no sense (min_key_size {ints['min_key_size']}, max_key_size "
                f"{ints['max_key_size']}, max_key_per_request {ints['max_key_per_request']})",
                url=url,
            )
        return KmeStatus(
            source_kme_id=str(body.get("source_KME_ID", "")),
            target_kme_id=str(body.get("target_KME_ID", "")),
            master_sae_id=str(body.get("master_SAE_ID", "")),
            **ints,
        )

    async def enc_keys(self, slave_sae: str, *, number: int, size_bits: int) -> list[DeliveredKey]:
        """`number` new keys of `size_bits` bits for the slave SAE `slave_sae` (we are the master)."""
        url = f"{self.base_url}{API_PREFIX}/{quote(slave_sae, safe='')}/enc_keys"
        body = await self._call(
            "POST", url, {"number": number, "size": size_bits}, _answer_cap(number, size_bits)
        )
        keys = _keys(body, url, size_bits=size_bits)
        if len(keys) != number:
            raise KmeError(f"asked for {number} key(s), the answer holds {len(keys)}", url=url)
        return keys

    async def dec_keys(
        self, master_sae: str, key_ids: Sequence[str], *, max_key_bits: int = MAX_KEY_BITS
    ) -> list[DeliveredKey]:
        """The keys named `key_ids` that the master SAE `master_sae` took for us, in that order. Their size
        was the master's choice: the answer may hold up to `max_key_bits` per key named."""
        url = f"{self.base_url}{API_PREFIX}/{quote(master_sae, safe='')}/dec_keys"
        body = await self._call(
            "POST",
            url,
            {"key_IDs": [{"key_ID": k} for k in key_ids]},
            _answer_cap(len(key_ids), max_key_bits),
        )
        by_id = {k.key_id: k for k in _keys(body, url, size_bits=None)}
        wanted = [canonical_key_id(k) or k for k in key_ids]
        if set(by_id) != set(wanted) or len(by_id) != len(wanted):
            raise KmeError(
                f"asked for key(s) {sorted(wanted)}, the answer holds {sorted(by_id)}", url=url, status=200
            )
        return [by_id[k] for k in wanted]

    # ---- HTTP

    async def _call(self, method: str, url: str, payload: dict[str, Any] | None, cap: int) -> dict[str, Any]:
        try:
            async with self._client().request(method, url, json=payload, allow_redirects=False) as response:
                raw = await _read_bounded(
                    response, cap if response.status == 200 else SMALL_ANSWER_BYTES, url
                )
                status = response.status
        except TimeoutError:
            raise KmeUnavailable(f"no answer within {self._timeout_s:g} s", url=url) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise KmeError(
                f"its server certificate is not trusted: {exc.certificate_error}", url=url
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise KmeError(f"TLS with the KME failed: {exc}", url=url) from None
        except aiohttp.ClientConnectorError as exc:
            raise KmeUnavailable(
                f"cannot connect: {exc.os_error.strerror or exc.os_error}", url=url
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            # A connection dropped mid-answer, or closed by a TLS alert after the handshake (TLS 1.3 tells
            # a client that its certificate was refused only then): say what the KME did.
            raise KmeUnavailable(f"the connection failed: {_reason(exc)}", url=url) from None
        if status != 200:
            raise _refusal(status, raw, url)
        return _json_object(raw, url, status)


async def _read_bounded(response: aiohttp.ClientResponse, cap: int, url: str) -> bytes:
    length = response.content_length
    if length is not None and length > cap:
        raise KmeError(
            f"answer of {length} bytes is over the {cap}-byte bound", url=url, status=response.status
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > cap:
            raise KmeError(f"answer is over the {cap}-byte bound", url=url, status=response.status)
        parts.append(chunk)
    return b"".join(parts)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]


def _json_object(raw: bytes, url: str, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KmeError("the answer is not UTF-8 JSON", url=url, status=status) from None
    if not isinstance(body, dict):
        raise KmeError("the answer is not a JSON object", url=url, status=status)
    return body


def _refusal(status: int, raw: bytes, url: str) -> KmeError:
    """The KME's error answer as our exception: its ETSI message (and details) when it sent one."""
    try:
        body = _json_object(raw, url, status)
    except KmeError:
        message = f"no ETSI error object ({raw[:120]!r})"
    else:
        text = body.get("message")
        message = str(text)[:500] if text is not None else "no message"
        details = body.get("details")
        if isinstance(details, list) and details:
            message += f" (details: {json.dumps(details[:5])[:300]})"
    cls = KmeUnavailable if status == 503 else KmeError
    return cls(message, url=url, status=status)


def _keys(body: dict[str, Any], url: str, *, size_bits: int | None) -> list[DeliveredKey]:
    """The keys of a key container, each checked: a UUID key ID (given once), base64 material of exactly
    `size_bits` bits when the size is known, else at least one byte."""
    entries = body.get("keys")
    if not isinstance(entries, list):
        raise KmeError("the answer has no keys array", url=url, status=200)
    keys: list[DeliveredKey] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KmeError(f"keys[{i}] is not an object", url=url, status=200)
        key_id = canonical_key_id(entry.get("key_ID"))
        if key_id is None:
            raise KmeError(f"keys[{i}].key_ID is not a UUID", url=url, status=200)
        if key_id in seen:
            raise KmeError(f"key ID {key_id} is given twice", url=url, status=200)
        seen.add(key_id)
        text = entry.get("key")
        try:
            material = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            material = b""
        if not material:
            raise KmeError(f"key {key_id} is not base64 key material", url=url, status=200)
        if size_bits is not None and 8 * len(material) != size_bits:
            raise KmeError(
                f"key {key_id} holds {8 * len(material)} bits, {size_bits} were asked for",
                url=url,
                status=200,
            )
        keys.append(DeliveredKey(key_id, material))
    return keys
