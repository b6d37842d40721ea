"""This end's connection to the quantum-channel service for one link: dial it (with the one reconnect
policy), introduce the link, pass every answer on, and carry the link machine's submissions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from qlinkmed.qlinkd.errors import FrameError
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import ChannelRequest
from qlinkmed.qlinkd.link.framing import encode_length_prefixed, read_frame
from qlinkmed.qlinkd.link.wire import MAX_FRAME_BYTES, decode_frame, encode_frame
from qlinkmed.qlinkd.ops import pki
from qlinkmed.qlinkd.ops.backoff import RECONNECT_JITTER, Backoff, raise_if_cancelling
from qlinkmed.qlinkd.ops.toml_reader import Address

log = logging.getLogger("qlink.link")

RECONNECT_S = (0.1, 2.0)
"""First and longest pause between connection attempts (growing by half each time)."""
CLOSE_WAIT_S = 1.0
"""How long closing a connection (to the peer or to the channel service) waits for the other side."""


def backoff() -> Backoff:
    """The pauses between connection attempts of a link (classical and quantum channel alike)."""
    return Backoff(first_s=RECONNECT_S[0], longest_s=RECONNECT_S[1], factor=1.5, jitter=RECONNECT_JITTER)


class ChannelClient:
    def __init__(
        self,
        address: Address,
        ssl_context: ssl.SSLContext,
        hello: lm.ChannelHello,
        on_answer: Callable[[int, lm.WireMessage], None],
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._address = address
        self._ssl = ssl_context
        self._hello = hello
        self._on_answer = on_answer
        self._on_refused = on_refused
        """Called when the channel's address answered with another identity's certificate."""
        self._writer: asyncio.StreamWriter | None = None
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the connection; whether it is up."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self.connected

    def submit(self, request: ChannelRequest) -> bool:
        """Send one submission; False (nothing sent) when the channel is not connected."""
        if self._writer is None:
            return False
        self._writer.write(encode_length_prefixed(encode_frame(request.message, request.round_id)))
        return True

    async def run(self) -> None:
        address, pauses = self._address, backoff()
        while True:
            raise_if_cancelling()
            try:
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, ssl=self._ssl, server_hostname=address.host
                )
            except (OSError, TimeoutError) as exc:
                log.debug("quantum channel at %s unreachable: %s", address, exc)
            else:
                who = pki.peer_common_name(writer.transport)
                if who == pki.CHANNEL_NAME:
                    pauses.reset()
                    await self._session(reader, writer)
                else:
                    # Any certificate of the deployment's CA carries a valid hostname; only the channel's
                    # may carry the link's photons.
                    log.error(
                        "quantum channel at %s refused: its certificate names %r, not %r",
                        address,
                        who,
                        pki.CHANNEL_NAME,
                    )
                    self._on_refused()
                    writer.close()
                    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                        async with asyncio.timeout(CLOSE_WAIT_S):
                            await writer.wait_closed()
            await asyncio.sleep(pauses.delay())

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_length_prefixed(encode_frame(self._hello, 0)))
        self._writer = writer
        self._up.set()
        log.info("quantum channel connected for %s", self._hello.peer)
        try:
            while (data := await read_frame(reader, MAX_FRAME_BYTES)) is not None:
                round_id, message = decode_frame(data)
                if round_id == 0 and isinstance(message, lm.ChannelError):
                    # Rounds count from 1: this is the channel refusing the connection itself (identity,
                    # link or limit). It closes next; say why, or the operator sees only endless redials.
                    log.error("quantum channel refused the link to %s: %s", self._hello.peer, message.reason)
                    continue
                self._on_answer(round_id, message)
        except FrameError as exc:
            log.warning("quantum channel sent a bad frame, reconnecting: %s", exc)
        except (ConnectionError, OSError) as exc:
            log.info("quantum channel connection lost: %s", exc)
        finally:
            self._writer = None
            self._up.clear()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await writer.wait_closed()
