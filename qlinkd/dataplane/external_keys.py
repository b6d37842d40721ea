"""Data-plane keys from an external ETSI GS QKD 014 KME (``key_source = "etsi014"`` on a ``[[peer]]``): real
QKD hardware, or anything that speaks the standard. No emulated link runs for such a peer.

The sending end is the master SAE: it takes keys with enc_keys from its KME and names their IDs in the
session's frames, exactly as pool keys' IDs travel. The receiving end is the slave SAE: it fetches them by
ID with dec_keys from its own KME, which got them from the master's KME over the QKD link. Keys are taken
when a session needs them (the data plane's ``take`` is async), so nothing is buffered and a crash loses
nothing but keys already taken for a session that never opened: the peer's KME expires those unfetched.

A take larger than the KME's ``max_key_size`` is split into several keys of equal size (the material
concatenated, in order, as a session's or a one-time-pad frame's key IDs are); one larger than
``max_key_per_request`` such keys is refused with ``KmeError``, and the sender falls back to AEAD for that
message, audited, as it does when the pool is short.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from qlinkmed.qlinkd.dataplane.etsi_client import MSG_KEYS_NOT_FOUND, EtsiClient, KmeStatus
from qlinkmed.qlinkd.errors import KeyNotFound, KmeError, KmeUnavailable, SessionMisuse
from qlinkmed.qlinkd.pool.values import DeliveredKey

log = logging.getLogger("qlink.data")

ETSI014 = "etsi014"
"""The ``key_source`` value of a peer keyed by an external KME (status and audit say it)."""
MAX_KEYS_PER_TAKE = 255
"""A one-time-pad frame names at most 255 key IDs (one count byte)."""
FETCH_RETRY_S = (0.05, 1.0)
"""First and longest pause between dec_keys attempts while a key has not reached our KME yet."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRequest:
    """How one take is asked of the KME: `number` keys of `size_bits` each."""

    number: int
    size_bits: int


def plan_request(size_bits: int, status: KmeStatus, *, url: str) -> KeyRequest:
    """The fewest keys of one size, within the KME's limits, whose concatenation holds at least `size_bits`
    bits (a session key of 256 bits is one key of 256 bits). KmeError (naming the KME at `url`) if the KME
    cannot give that much in one request."""
    if size_bits < 1:
        raise ValueError(f"size_bits must be positive, got {size_bits}")
    largest = status.max_key_size - status.max_key_size % 8
    if largest < 8:
        raise KmeError(f"the KME's max_key_size is {status.max_key_size} bits", url=url)
    number = -(-size_bits // largest)
    size = 8 * -(-size_bits // (8 * number))
    size = max(size, status.min_key_size + (-status.min_key_size) % 8)
    limit = min(status.max_key_per_request, MAX_KEYS_PER_TAKE)
    if number > limit or size > status.max_key_size:
        raise KmeError(
            f"{size_bits} bits need {number} keys of at most {status.max_key_size} bits, "
            f"more than the {limit} one request may return",
            url=url,
        )
    return KeyRequest(number=number, size_bits=size)


class ExternalKeys:
    """A ``KeySource`` for one peer over our SAE's KME. `sae_id` is our data-plane SAE at that KME,
    `peer_sae_id` the peer facility's data-plane SAE at its own KME."""

    name = ETSI014

    def __init__(self, peer: str, client: EtsiClient, *, sae_id: str, peer_sae_id: str) -> None:
        self.peer = peer
        self.sae_id = sae_id
        self.peer_sae_id = peer_sae_id
        self._client = client
        self._status: KmeStatus | None = None

    @property
    def url(self) -> str:
        return self._client.base_url

    async def close(self) -> None:
        await self._client.close()

    async def _limits(self) -> KmeStatus:
        # Read once and kept: the limits of a KME do not change while it runs; a failure forgets them.
        if self._status is None:
            status = await self._client.status(self.peer_sae_id)
            if status.master_sae_id and status.master_sae_id != self.sae_id:
                # The KME names us from our certificate: a certificate of another SAE is a configuration
                # error that would otherwise only show as keys the peer can never fetch.
                raise KmeError(
                    f"the KME knows our certificate as SAE {status.master_sae_id!r}, "
                    f"the configuration says sae_id = {self.sae_id!r}",
                    url=self._client.base_url,
                    status=200,
                )
            self._status = status
        return self._status

    async def take(self, peer: str, size_bits: int, *, single: bool = False) -> list[DeliveredKey]:
        self._check_peer(peer)
        limits = await self._limits()
        if single and size_bits > limits.max_key_size:
            raise KmeError(
                f"one key of {size_bits} bits is over the KME's max_key_size {limits.max_key_size}",
                url=self._client.base_url,
            )
        request = plan_request(size_bits, limits, url=self._client.base_url)
        try:
            return await self._client.enc_keys(
                self.peer_sae_id, number=request.number, size_bits=request.size_bits
            )
        except KmeError:
            self._status = None  # read the limits again: the KME may have been replaced or reconfigured
            raise

    async def fetch(self, peer: str, key_ids: list[str], timeout: float) -> list[DeliveredKey]:
        """The keys by ID from our KME, waiting up to `timeout` s for keys it does not hold yet (the
        master's KME may still be passing them over the QKD link). KeyNotFound if they never come;
        KmeUnavailable if the KME stays unreachable; KmeError at once for any other refusal."""
        self._check_peer(peer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = FETCH_RETRY_S[0]
        while True:
            try:
                # Our KME's own largest key bounds what it may answer (the master's KME shares its limits).
                limits = await self._limits()
                return await self._client.dec_keys(
                    self.peer_sae_id, key_ids, max_key_bits=limits.max_key_size
                )
            except KmeUnavailable as exc:
                last: KmeError = exc
            except KmeError as exc:
                if not (exc.status == 400 and exc.message.startswith(MSG_KEYS_NOT_FOUND)):
                    raise
                last = exc
            if loop.time() + pause > deadline:
                if isinstance(last, KmeUnavailable):
                    raise last
                raise KeyNotFound(tuple(key_ids)) from None
            await asyncio.sleep(pause)
            pause = min(2 * pause, FETCH_RETRY_S[1])

    def _check_peer(self, peer: str) -> None:
        if peer != self.peer:
            raise SessionMisuse(f"keys for {peer!r} asked of the KME that serves {self.peer!r}")
