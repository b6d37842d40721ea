"""The seed paper's image cipher (paper 000; docs/references.md §8), numpy path.

Encryption of the zero-padded 2^n x 2^n image P (see `neqr`), every step a permutation of NEQR basis
states, so `circuit` can build the same thing from gates:
1. Bit-plane scrambling, per channel: a keyed permutation of the q bit-planes (a SWAP network), then XOR
   of each plane with the one below it, b_i ^= b_(i-1) for i = q-1 .. 1 (a CNOT chain). Done as a lookup
   table over all 2^q values.
2. Position scrambling: a keyed permutation of pixel positions. Output (y, x) takes the pixel at row R[y]
   and column Cc[(x + S[y]) mod 2^n] (a row permutation, a per-row cyclic shift and a column
   permutation, all from the chaotic stream). The abstract scrambles the KEY image's positions instead;
   that is a no-op for security (a permuted keystream is just another keystream), so qlink scrambles the
   image, where the step at least moves neighbours apart.
3. Quantum XOR with the chaotic key image K, over the same position qubits (position-controlled X gates).
4. RGB only: colour-channel mixing, a keyed permutation of the three channels then c1 ^= c0, c2 ^= c1.

Key schedule (docs/references.md §8, pitfalls 1-2): the stream depends on the key, the per-image nonce AND
the image itself. tag = HMAC-SHA256 under an HKDF(key, nonce) MAC key of the layout header and the pixels;
the tag travels in the `CipherImage` and is mixed into the HKDF that seeds the chaotic system. So one
changed pixel gives an unrelated cipher image even under the same key and nonce, two different images
never share a keystream, and decryption verifies the tag (any tampering raises `IntegrityError`). The cost
of determinism: the same image under the same key and nonce gives the same cipher image, so callers must
still use a fresh nonce per image to hide repeats.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from hashlib import sha256

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ConfigError, IntegrityError, IntegrityFailure
from . import chaos
from .neqr import Layout, crop, layout_for, layout_of, pad

VERSION = 1
"""Cipher format version; bound into the tag and the key derivation."""
MIN_KEY_BYTES = 16
MIN_NONCE_BYTES = 12
_MAC_INFO = b"qlink image v1 mac"
_WORD = 4  # keystream bytes per control word (uint32, little-endian)


@dataclass(frozen=True, slots=True, kw_only=True)
class CipherImage:
    """A cipher image: the padded 2^n x 2^n cipher array plus what decryption needs besides key and nonce."""

    data: np.ndarray = field(repr=False)
    """Padded cipher pixels, same dtype as the plaintext."""
    shape: tuple[int, ...]
    """Shape of the original image, restored by cropping."""
    dtype: str
    """numpy dtype name of the original image ("uint8" or "uint16")."""
    tag: bytes = field(repr=False)
    """HMAC-SHA256 of the plaintext (keyed); seeds the keystream and is verified on decryption."""
    version: int = VERSION
    """Format version."""

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise ConfigError("version", f"unsupported cipher image version {self.version}")
        if len(self.tag) != 32:
            raise ConfigError("tag", "must be 32 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class CipherPlan:
    """Every keyed choice of one encryption; the numpy and the circuit paths both execute it."""

    layout: Layout
    """Image layout."""
    plane_perm: np.ndarray = field(repr=False)
    """(channels, q): output bit-plane j of channel c is input plane plane_perm[c, j]."""
    position_src: np.ndarray = field(repr=False)
    """(4^n,): output flat position i takes the pixel at input flat position position_src[i]."""
    key_image: np.ndarray = field(repr=False)
    """Padded key image (same shape and dtype as the padded image)."""
    channel_perm: tuple[int, ...]
    """RGB: output channel j is input channel channel_perm[j] before the XOR chain; () for grayscale."""


def _check_inputs(key: bytes, nonce: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError("key", f"must be at least {MIN_KEY_BYTES} bytes")
    if len(nonce) < MIN_NONCE_BYTES:
        raise ConfigError("nonce", f"must be at least {MIN_NONCE_BYTES} bytes")


def _header(layout: Layout) -> bytes:
    return b"|".join(
        [b"qlink image", str(VERSION).encode(), str(layout.shape).encode(), layout.dtype.name.encode()]
    )


def image_tag(image: np.ndarray, key: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 of the layout header and the pixels under a MAC key derived from (key, nonce)."""
    _check_inputs(key, nonce)
    layout = layout_of(image)
    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=_MAC_INFO).derive(key)
    mac = hmac.new(mac_key, _header(layout), sha256)
    mac.update(np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).tobytes())
    return mac.digest()


def _words(stream: np.ndarray, count: int) -> np.ndarray:
    return stream[: count * _WORD].view("<u4").astype(np.int64)


def derive_plan(
    layout: Layout, key: bytes, nonce: bytes, tag: bytes, params: chaos.LorenzParams = chaos.DEFAULT_PARAMS
) -> CipherPlan:
    """Run the chaotic system for this image and cut its stream into the cipher's keyed choices.

    Stream order: row keys, column keys, row shifts (2^n words each), plane keys (channels x q words),
    channel keys (3 words, RGB only), then the key image bytes (little-endian for uint16).
    """
    _check_inputs(key, nonce)
    side, q, ch = layout.side, layout.bits, layout.channels
    n_words = 3 * side + ch * q + (3 if ch == 3 else 0)
    key_bytes = side * side * ch * layout.dtype.itemsize
    stream = chaos.keystream(key, nonce, _header(layout) + tag, n_words * _WORD + key_bytes, params)
    words = _words(stream, n_words)
    rows = np.argsort(words[:side], kind="stable")
    cols = np.argsort(words[side : 2 * side], kind="stable")
    shifts = words[2 * side : 3 * side] % side
    # src[y, x] = rows[y] * side + cols[(x + shifts[y]) mod side]: row y is cols rotated left by
    # shifts[y], read off a sliding window over cols twice (a row copy, not a per-pixel index).
    rotations = sliding_window_view(np.concatenate([cols, cols[:-1]]), side)
    src = rotations[shifts]
    src += (rows * side)[:, None]
    planes = words[3 * side : 3 * side + ch * q].reshape(ch, q)
    plane_perm = np.argsort(planes, axis=1, kind="stable")
    channel_perm: tuple[int, ...] = ()
    if ch == 3:
        channel_perm = tuple(int(i) for i in np.argsort(words[3 * side + ch * q :], kind="stable"))
    key_image = (stream[n_words * _WORD :].view(layout.dtype.newbyteorder("<")).astype(layout.dtype)).reshape(
        layout.padded_shape
    )
    return CipherPlan(
        layout=layout,
        plane_perm=plane_perm,
        position_src=src.reshape(-1),
        key_image=key_image,
        channel_perm=channel_perm,
    )


def bitplane_table(perm: np.ndarray, bits: int) -> np.ndarray:
    """Lookup table of step 1 for one channel: plane permutation, then b_i ^= b_(i-1) (old values)."""
    values = np.arange(1 << bits, dtype=np.uint32)
    permuted = np.zeros_like(values)
    for j in range(bits):
        permuted |= ((values >> np.uint32(perm[j])) & np.uint32(1)) << np.uint32(j)
    mask = np.uint32((1 << bits) - 1)
    return (permuted ^ ((permuted << np.uint32(1)) & mask)).astype(np.uint8 if bits == 8 else np.uint16)


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


def apply_plan(padded: np.ndarray, plan: CipherPlan) -> np.ndarray:
    """Steps 1-4 on a padded image; returns the padded cipher array.

    Worked one output channel at a time on 1-D columns (a gather of interleaved RGB rows is several times
    slower than three gathers of columns). Output channel j is input channel channel_perm[j] after steps
    1-3, then XORed with output channel j - 1 (step 4).
    """
    lay = plan.layout
    size = lay.side * lay.side
    flat = padded.reshape(size, lay.channels)
    key = plan.key_image.reshape(size, lay.channels)
    out = np.empty((size, lay.channels), dtype=lay.dtype)
    previous = None
    for j, c in enumerate(plan.channel_perm or (0,)):
        column = np.take(bitplane_table(plan.plane_perm[c], lay.bits), flat[:, c])  # step 1
        column = np.take(column, plan.position_src)  # step 2
        column ^= key[:, c]  # step 3
        if previous is not None:
            column ^= previous  # step 4
        out[:, j] = previous = column
    return out.reshape(lay.padded_shape)


def invert_plan(cipher: np.ndarray, plan: CipherPlan) -> np.ndarray:
    """Exact inverse of `apply_plan`, also a column at a time; step 2 is undone by a scatter."""
    lay = plan.layout
    size = lay.side * lay.side
    flat = cipher.reshape(size, lay.channels)
    key = plan.key_image.reshape(size, lay.channels)
    out = np.empty((size, lay.channels), dtype=lay.dtype)
    column = np.empty(size, dtype=lay.dtype)
    for j, c in enumerate(plan.channel_perm or (0,)):
        if j:
            np.bitwise_xor(flat[:, j], flat[:, j - 1], out=column)  # step 4
        else:
            column[:] = flat[:, 0]
        column ^= key[:, c]  # step 3
        inverse = _inverse(bitplane_table(plan.plane_perm[c], lay.bits))
        out[:, c][plan.position_src] = np.take(inverse, column)  # steps 2 and 1
    return out.reshape(lay.padded_shape)


def encrypt(
    image: np.ndarray, key: bytes, nonce: bytes, params: chaos.LorenzParams = chaos.DEFAULT_PARAMS
) -> CipherImage:
    """Encrypt an H x W (uint8/uint16) or H x W x 3 (RGB) image. Use a fresh `nonce` for every image."""
    layout = layout_of(image)
    tag = image_tag(image, key, nonce)
    plan = derive_plan(layout, key, nonce, tag, params)
    data = apply_plan(pad(image, layout), plan)
    return CipherImage(data=data, shape=layout.shape, dtype=layout.dtype.name, tag=tag)


def decrypt(
    cipher: CipherImage, key: bytes, nonce: bytes, params: chaos.LorenzParams = chaos.DEFAULT_PARAMS
) -> np.ndarray:
    """Decrypt and verify; raises `IntegrityError` on a wrong key, nonce, tag or tampered pixels."""
    layout = layout_for(cipher.shape, cipher.dtype)
    dtype = layout.dtype
    if cipher.data.shape != layout.padded_shape or cipher.data.dtype != dtype:
        raise ConfigError("data", "cipher array does not match its shape and dtype")
    plan = derive_plan(layout, key, nonce, cipher.tag, params)
    padded = invert_plan(cipher.data, plan)
    image = crop(padded, layout)
    # The tag covers the image only; the padding must come back as the zeros it was, or a changed
    # cipher pixel that lands in the padding would go unnoticed.
    padding_ok = not padded[layout.height :].any() and not padded[:, layout.width :].any()
    if not hmac.compare_digest(image_tag(image, key, nonce), cipher.tag) or not padding_ok:
        raise IntegrityError(IntegrityFailure.TAG, "image cipher: tag mismatch")
    return image
