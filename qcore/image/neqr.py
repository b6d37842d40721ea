"""NEQR / GNEQR layout of a classical image, and the power-of-two padding rule.

NEQR (Zhang et al., QIP 12, 2833, 2013) stores a 2^n x 2^n image with q colour qubits and 2n position
qubits: |I> = 2^-n sum_{Y,X} |C_YX>|Y>|X>. GNEQR is read here as NCQI's generalisation (Sang et al., QIP
2017): R, G and B share one 3q-qubit colour register. 8-bit and 16-bit grayscale (q = 8, 16) and RGB
(q = 8 per channel) are supported.

Padding rule: an H x W image is padded with ZEROS on the bottom and the right to 2^n x 2^n, n the smallest
integer with 2^n >= max(H, W) (n >= 1). Zeros rather than edge replication because the rule must not
depend on pixel values and the padding is cropped away after decryption. `crop` undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """Shape of an image and of its NEQR register."""

    height: int
    """Rows of the original image."""
    width: int
    """Columns of the original image."""
    channels: int
    """1 for grayscale, 3 for RGB."""
    dtype: np.dtype
    """uint8 or uint16."""

    @property
    def n(self) -> int:
        """Position qubits per axis: the padded image is 2^n x 2^n."""
        return max(1, (max(self.height, self.width) - 1).bit_length())

    @property
    def side(self) -> int:
        """Side of the padded square image."""
        return 1 << self.n

    @property
    def bits(self) -> int:
        """Colour qubits per channel (bit-planes)."""
        return self.dtype.itemsize * 8

    @property
    def colour_qubits(self) -> int:
        """Colour register width: q for grayscale, 3q for GNEQR colour."""
        return self.bits * self.channels

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Shape of the padded array."""
        if self.channels == 1:
            return (self.side, self.side)
        return (self.side, self.side, self.channels)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the original array."""
        if self.channels == 1:
            return (self.height, self.width)
        return (self.height, self.width, self.channels)


def layout_of(image: np.ndarray) -> Layout:
    """Validate `image` (H x W grayscale or H x W x 3 RGB, uint8 or uint16) and describe its layout."""
    return layout_for(tuple(image.shape), image.dtype)


def layout_for(shape: tuple[int, ...], dtype: np.dtype | str) -> Layout:
    """Validate an image shape and dtype and describe the layout."""
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ConfigError("image", f"dtype must be uint8 or uint16, not {dtype}")
    if len(shape) == 2:
        channels = 1
    elif len(shape) == 3 and shape[2] == 3:
        channels = 3
    else:
        raise ConfigError("image", f"shape must be (H, W) or (H, W, 3), not {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ConfigError("image", "must not be empty")
    return Layout(height=int(shape[0]), width=int(shape[1]), channels=channels, dtype=dtype)


def pad(image: np.ndarray, layout: Layout) -> np.ndarray:
    """Zero-pad to 2^n x 2^n (bottom and right); always returns a new C-contiguous array."""
    out = np.zeros(layout.padded_shape, dtype=layout.dtype)
    out[: layout.height, : layout.width] = image
    return out


def crop(padded: np.ndarray, layout: Layout) -> np.ndarray:
    """Undo `pad`."""
    return np.ascontiguousarray(padded[: layout.height, : layout.width])


def basis_states(padded: np.ndarray, layout: Layout) -> np.ndarray:
    """The NEQR basis state of each position: colour word (channel c at bits c*q..) for flat index Y*2^n+X.

    Returned as uint64 of length 4^n; the state is the uniform superposition of |word>|Y>|X>.
    """
    flat = padded.reshape(layout.side * layout.side, layout.channels).astype(np.uint64)
    word = np.zeros(flat.shape[0], dtype=np.uint64)
    for c in range(layout.channels):
        word |= flat[:, c] << np.uint64(c * layout.bits)
    return word


def from_basis_states(words: np.ndarray, layout: Layout) -> np.ndarray:
    """Inverse of `basis_states`: colour words per flat position back to the padded array."""
    mask = np.uint64((1 << layout.bits) - 1)
    chans = [(words >> np.uint64(c * layout.bits)) & mask for c in range(layout.channels)]
    return np.stack(chans, axis=-1).astype(layout.dtype).reshape(layout.padded_shape)
