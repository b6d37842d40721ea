"""The forwarding SCU's TCP connection: Nagle off, and every segment the PACS sends acknowledged at once.

Why: a C-STORE is a request and a response, and Linux treats such a connection as interactive, holding
its ACKs for up to 40 ms to ride on the next data it sends. A PACS that writes its response in two
pieces with Nagle on (Debian's dcmtk `storescp` writes the PDU header, then the command) cannot send the
second piece until the first is acknowledged: every instance waited for the delayed-ACK timer, 40 ms of
the 50-90 ms an instance took (issue 17's benchmark; `storescu` -> `storescp` pays it too). Setting
TCP_QUICKACK once data has been read sends that ACK now (the kernel re-enters the delayed mode on its own,
so it is set again after every read). TCP_NODELAY sends each PDU as it is written (pynetdicom writes
whole PDUs, never a byte at a time). Both are only socket options: the bytes on the wire are unchanged.
"""

from __future__ import annotations

import contextlib
import socket
from ssl import SSLContext

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
"""Linux only; elsewhere the ACKs keep the kernel's own timing."""
READ_BYTES = 64 << 10
"""Largest single read: a 16 KB PDU (dcmtk's default) arrives in one or two."""


def ack_now(sock: socket.socket) -> None:
    """Acknowledge what has arrived without the delayed-ACK wait (a no-op where the option is missing)."""
    if _QUICKACK is not None:
        # An optimisation only: a socket already closed fails its next read, which reports it.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class PromptSocket(AssociationSocket):
    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def recv(self, nr_bytes: int) -> bytearray:
        """`nr_bytes` or, if the peer closed, what came before (as pynetdicom's own); each read's segments
        acknowledged before waiting for the next."""
        sock = self.socket
        if sock is None:
            return bytearray()
        out = bytearray()
        while len(out) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(out), READ_BYTES))
            if not chunk:
                break
            out += chunk
            ack_now(sock)
        return out


class PromptAE(AE):
    """pynetdicom's AE whose requested associations run over a `PromptSocket`."""

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: tuple[SSLContext, str] | None
    ) -> AssociationSocket:
        sock = PromptSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock
