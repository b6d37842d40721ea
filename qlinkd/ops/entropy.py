"""The daemon's randomness: every secret it draws comes from the OS CSPRNG through ``random_bytes``.

``random_bytes`` is the one audited function: raw key bits, bases, decoy classes, analyser settings,
sample positions, the published Cascade and Toeplitz seeds, and the daemon's other secrets (API tokens,
at-rest salts and nonces, testbed pre-shared keys) all come through it. The daemon never takes a seed
and never runs a numpy generator on anything of its own (tests/test_entropy.py checks the sources).
The quantum-channel service is the exception by design: it emulates photons, losses and detectors with
numpy generators, and is a trusted party that knows the photons' states by construction.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from qlinkmed.qcore.randomness import PartyRandomness, RandomSource


def random_bytes(n: int) -> bytes:
    """n bytes from the operating system's CSPRNG (getrandom(2) on Linux)."""
    return os.urandom(n)


def token_urlsafe(nbytes: int) -> str:
    """A URL-safe text token of `nbytes` random bytes (as ``secrets.token_urlsafe``)."""
    return base64.urlsafe_b64encode(random_bytes(nbytes)).rstrip(b"=").decode("ascii")


def bearer_token(path: Path) -> str:
    """The API token kept in `path`: read, or on first use made from 32 random bytes and written 0600
    (created exclusively, fsynced) before anyone is told it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        return token


def party_randomness() -> PartyRandomness:
    """A link end's two sources, both on the OS CSPRNG. Each draw is its own ``random_bytes`` call, so
    the published seeds (public) and the secret choices never share a draw."""
    return PartyRandomness(secret=RandomSource(random_bytes), public=RandomSource(random_bytes))
