"""`qlink image encrypt|decrypt|metrics`: the seed paper's quantum image cipher (`qcore.image`) on files.

- `encrypt IN --key-file KEY --out OUT.qimg`: IN is a PNG, JPEG, DICOM or .npy image (kind read from its
  first bytes, not its name); KEY holds at least 32 bytes of raw QKD key material. Every image gets a
  fresh 16-byte nonce from os.urandom; OUT is `qcore.image.container.pack(cipher, nonce)`.
- `decrypt IN.qimg --key-file KEY --out OUT.png|OUT.npy`: PNG as 8-bit gray (mode L), 16-bit gray (mode
  I;16) or RGB; .npy for anything (16-bit RGB has no Pillow PNG mode). A wrong key or an altered file is
  refused and nothing is written.
- `metrics IN [--key-file KEY] [--seed N]`: encrypt IN and judge the result: NPCR and UACI for one key
  bit flipped and for one pixel changed (same key and nonce, the hard case) by the Wu et al. tests,
  entropy (G-test), histogram chi-square and adjacent-pixel correlations of the plain and cipher images,
  per RGB channel, at alpha = 0.05. Failed tests do not change the exit code: at alpha = 0.05 an ideal
  cipher fails each test 5 % of the time.

Choices:
- Only pixels are encrypted. A DICOM file's header (patient data) is not carried; `qlink send` moves
  whole studies. Multi-frame DICOM is refused (a cipher image holds one frame), as is PALETTE COLOR.
- Signed 16-bit DICOM pixels (PixelRepresentation 1, e.g. CT) are encrypted as their two's-complement
  words, so decryption gives uint16: read it back with `.view(numpy.int16)`.
- PNG/JPEG: 1-bit is read as 8-bit gray and palette images as RGB; alpha and CMYK are refused.
- 16-bit images are assessed on the high byte of each pixel (the Wu et al. tests are defined for 8 bits;
  the high bytes of a uniform 16-bit cipher are uniform 8-bit values, so the tests keep their meaning).
- Output goes to a temporary file (mode 0600) beside OUT, put in place only when complete. An existing
  OUT is refused (exit 2) unless --force, checked before any work and again, atomically, when the file
  is put in place (a hard link, which fails on an existing name, instead of a rename over it).

Exit codes: 0 done, 1 a file refused (one line naming it and the problem), 2 usage (OUT exists without
--force).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .image_metrics import assess, format_metrics

if TYPE_CHECKING:
    import numpy as np

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
KEY_MIN_BYTES = 32
NONCE_BYTES = 16
_CIPHER_SUFFIXES = (".qimg",)
_PLAIN_SUFFIXES = (".png", ".npy")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_NPY = b"\x93NUMPY"
_DICM_AT, _DICM = 128, b"DICM"


class _Refused(Exception):
    """A file this command cannot use; `name` and `problem` make the one-line message."""

    def __init__(self, name: str | Path, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = str(name)
        self.problem = problem


class _Exists(Exception):
    """OUT appeared while the command worked, and --force was not given."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


@dataclass(frozen=True, slots=True)
class _Image:
    pixels: np.ndarray
    kind: str
    note: str | None = None


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(parser))
    key_help = "file of at least 32 bytes of raw key material (e.g. QKD key fetched via ETSI 014)"
    image_help = "PNG, JPEG, single-frame DICOM or .npy (8- or 16-bit gray, or RGB)"
    enc = sub.add_parser(
        "encrypt",
        help="encrypt an image into a .qimg cipher image",
        description="Encrypt the pixels of IN under KEY with a fresh random nonce and write the cipher "
        "image (container format) to OUT.qimg. Only pixels are carried, never a DICOM header.",
    )
    enc.add_argument("input", type=Path, metavar="IN", help=image_help)
    enc.add_argument("--key-file", required=True, type=Path, metavar="KEY", help=key_help)
    enc.add_argument("--out", required=True, type=Path, metavar="OUT.qimg", help="cipher image to write")
    enc.add_argument("--force", action="store_true", help="replace OUT if it exists")
    dec = sub.add_parser(
        "decrypt",
        help="decrypt a .qimg cipher image to .png or .npy",
        description="Decrypt and verify IN.qimg under KEY. A wrong key or an altered file is refused "
        "and nothing is written. PNG holds 8-bit gray, 16-bit gray or 8-bit RGB; .npy holds anything.",
    )
    dec.add_argument("input", type=Path, metavar="IN.qimg", help="cipher image")
    dec.add_argument("--key-file", required=True, type=Path, metavar="KEY", help=key_help)
    dec.add_argument("--out", required=True, type=Path, metavar="OUT", help="image to write: .png or .npy")
    dec.add_argument("--force", action="store_true", help="replace OUT if it exists")
    met = sub.add_parser(
        "metrics",
        help="judge the cipher on an image: NPCR/UACI, entropy, chi-square, correlations",
        description="Encrypt IN and judge the cipher image at alpha = 0.05: NPCR and UACI (Wu et al.) "
        "for one key bit flipped and one pixel changed, entropy (G-test), histogram chi-square and "
        "adjacent-pixel correlations, per RGB channel; 16-bit images on the high byte of each pixel.",
    )
    met.add_argument("input", type=Path, metavar="IN", help=image_help)
    met.add_argument("--key-file", type=Path, metavar="KEY", help=key_help + " (default: a random key)")
    met.add_argument("--seed", type=int, help="draw the nonce (and key, without --key-file) from it")
    for p, run in ((enc, run_encrypt), (dec, run_decrypt), (met, run_metrics)):
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(run=run)


# Commands -----------------------------------------------------------------------------------------------


def run_encrypt(args: argparse.Namespace) -> int:
    from qlinkmed.qcore.image import encrypt
    from qlinkmed.qcore.image.container import pack

    if (code := _check_out("encrypt", args, _CIPHER_SUFFIXES)) is not None:
        return code
    started = time.perf_counter()
    try:
        key = _read_key(args.key_file)
        image = _load_image(args.input)
        nonce = os.urandom(NONCE_BYTES)
        size = _write_atomic(args.out, pack(encrypt(image.pixels, key, nonce), nonce), force=args.force)
    except _Exists as exc:
        return _exists("encrypt", exc.path)
    except _Refused as exc:
        return _fail("encrypt", exc)
    result = _result("encrypt", args, image.pixels, size, started, format=image.kind)
    if image.note:
        result["note"] = image.note
    return _report(args, result)


def run_decrypt(args: argparse.Namespace) -> int:
    from qlinkmed.qcore.errors import ConfigError, IntegrityError
    from qlinkmed.qcore.image import decrypt
    from qlinkmed.qcore.image.container import unpack

    if (code := _check_out("decrypt", args, _PLAIN_SUFFIXES)) is not None:
        return code
    started = time.perf_counter()
    try:
        key = _read_key(args.key_file)
        blob = _read(args.input)
        try:
            cipher, nonce = unpack(blob)
            if args.out.suffix.lower() == ".png" and cipher.dtype == "uint16" and len(cipher.shape) == 3:
                raise _Refused(args.out, "16-bit RGB has no PNG mode in Pillow; write .npy instead")
            image = decrypt(cipher, key, nonce)
        except ConfigError as exc:
            raise _Refused(args.input, f"not a valid qlink cipher image: {exc.message}") from None
        except IntegrityError:
            problem = "does not decrypt: wrong key, or the file was altered (tag mismatch)"
            raise _Refused(args.input, problem) from None
        size = _write_atomic(args.out, _encode(image, args.out.suffix.lower()), force=args.force)
    except _Exists as exc:
        return _exists("decrypt", exc.path)
    except _Refused as exc:
        return _fail("decrypt", exc)
    return _report(args, _result("decrypt", args, image, size, started))


def run_metrics(args: argparse.Namespace) -> int:
    import numpy as np

    started = time.perf_counter()
    try:
        image = _load_image(args.input)
        key = _read_key(args.key_file) if args.key_file is not None else None
    except _Refused as exc:
        return _fail("metrics", exc)
    rng = np.random.default_rng(args.seed) if args.seed is not None else None
    if key is None:
        key = rng.bytes(KEY_MIN_BYTES) if rng is not None else os.urandom(KEY_MIN_BYTES)
    nonce = rng.bytes(NONCE_BYTES) if rng is not None else os.urandom(NONCE_BYTES)
    report: dict[str, Any] = {
        "command": "metrics",
        "input": str(args.input),
        "format": image.kind,
        "shape": list(image.pixels.shape),
        "dtype": image.pixels.dtype.name,
        "analysed": "pixels" if image.pixels.dtype == np.uint8 else "high byte of each 16-bit pixel",
        "key": "file" if args.key_file is not None else ("seeded" if rng is not None else "random"),
        "nonce": "seeded" if rng is not None else "random",
        "seed": args.seed,
        **assess(image.pixels, key, nonce),
    }
    report["seconds"] = round(time.perf_counter() - started, 4)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_metrics(report))
    return EXIT_OK


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Refused(path, "no such file") from None
    except IsADirectoryError:
        raise _Refused(path, "is a directory") from None
    except PermissionError:
        raise _Refused(path, "permission denied") from None
    except OSError as exc:
        raise _Refused(path, exc.strerror or str(exc)) from None


def _read_key(path: Path) -> bytes:
    key = _read(path)
    if len(key) < KEY_MIN_BYTES:
        raise _Refused(path, f"{len(key)} bytes of key material; at least {KEY_MIN_BYTES} are needed")
    return key


def _load_image(path: Path) -> _Image:
    """Read an image file by its content and check the cipher can take its pixel array."""
    from qlinkmed.qcore.errors import ConfigError
    from qlinkmed.qcore.image.neqr import layout_of

    data = _read(path)
    if data.startswith(_PNG):
        image = _Image(_decode_raster(path, data, "PNG"), "PNG")
    elif data.startswith(_JPEG):
        image = _Image(_decode_raster(path, data, "JPEG"), "JPEG")
    elif data[_DICM_AT : _DICM_AT + len(_DICM)] == _DICM:
        image = _decode_dicom(path, data)
    elif data.startswith(_NPY):
        image = _Image(_decode_npy(path, data), "NPY")
    else:
        raise _Refused(path, "not an image qlink can read (PNG, JPEG, DICOM or .npy)")
    try:
        layout_of(image.pixels)
    except ConfigError as exc:
        raise _Refused(path, f"{image.kind} pixel array not supported: {exc.message}") from None
    return image


def _decode_raster(path: Path, data: bytes, kind: str) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise _Refused(path, f"animated {kind} ({frames} frames) is not supported")
            im.load()
            mode = im.mode
            if "transparency" in im.info or mode in ("LA", "La", "PA", "RGBA", "RGBa"):
                raise _Refused(path, f"{kind} with transparency is not supported (gray or RGB only)")
            if mode in ("1", "L"):
                return np.asarray(im.convert("L"))
            if mode in ("P", "RGB"):
                return np.asarray(im.convert("RGB"))
            if mode in ("I;16", "I;16L", "I;16B"):
                return np.asarray(im).astype(np.uint16)
            if mode == "I":
                wide = np.asarray(im)
                if wide.size and (wide.min() < 0 or wide.max() > 0xFFFF):
                    raise _Refused(path, f"{kind} with 32-bit pixel values is not supported")
                return wide.astype(np.uint16)
            raise _Refused(path, f"{kind} in mode {mode} is not supported (8- or 16-bit gray, or RGB)")
    except Image.DecompressionBombError as exc:
        raise _Refused(path, f"{kind} too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise _Refused(path, f"{kind} signature, but Pillow cannot read the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise _Refused(path, f"corrupt or truncated {kind} ({exc})") from None


def _decode_dicom(path: Path, data: bytes) -> _Image:
    import numpy as np
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception as exc:  # pydicom raises many types for a damaged file
        raise _Refused(path, f"corrupt or truncated DICOM ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise _Refused(path, "DICOM file without (integer) pixel data")
    if frames > 1:
        problem = f"multi-frame DICOM ({frames} frames) is not supported: a cipher image holds one frame"
        raise _Refused(path, problem)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        raise _Refused(path, "PALETTE COLOR DICOM is not supported (gray or RGB only)")
    try:
        pixels = np.ascontiguousarray(ds.pixel_array)
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError...
        raise _Refused(path, f"cannot decode the DICOM pixel data ({exc})") from None
    note = None
    if pixels.dtype.kind == "i" and pixels.dtype.itemsize in (1, 2):
        bits = pixels.dtype.itemsize * 8
        pixels = pixels.view(f"u{pixels.dtype.itemsize}")
        note = f"signed pixels are encrypted as {bits}-bit two's-complement words: use .view(int{bits})"
    if pixels.dtype not in (np.uint8, np.uint16):
        raise _Refused(path, f"DICOM pixels of type {pixels.dtype} are not supported (8 or 16 bits)")
    return _Image(pixels, "DICOM", note)


def _decode_npy(path: Path, data: bytes) -> np.ndarray:
    import numpy as np

    try:
        pixels = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise _Refused(path, f"corrupt or truncated .npy ({exc})") from None
    if pixels.dtype.kind != "u" or pixels.dtype.itemsize not in (1, 2):
        raise _Refused(path, f".npy of {pixels.dtype} is not supported (uint8 or uint16)")
    return pixels.astype(pixels.dtype.newbyteorder("="))


def _encode(image: np.ndarray, suffix: str) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, image, allow_pickle=False)
        return buffer.getvalue()
    from PIL import Image

    size = (image.shape[1], image.shape[0])
    if image.dtype == np.uint16:
        im = Image.frombytes("I;16", size, image.astype("<u2").tobytes())
    else:
        im = Image.frombytes("L" if image.ndim == 2 else "RGB", size, image.tobytes())
    im.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes, *, force: bool) -> int:
    """Write `data` to a temporary file beside `path` (mode 0600), then rename it over `path` (`force`)
    or link it to `path`, which raises _Exists if something has taken the name meanwhile."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _Refused(path, f"cannot write here: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    except FileExistsError:
        raise _Exists(path) from None
    except OSError as exc:
        raise _Refused(path, f"cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)  # after a link, the name beside OUT; after a rename, already gone
    return len(data)


# Output -------------------------------------------------------------------------------------------------


def _check_out(action: str, args: argparse.Namespace, allowed: tuple[str, ...]) -> int | None:
    """The usage error in --out, before any work: a suffix we cannot write, or a file already there."""
    out: Path = args.out
    if out.suffix.lower() not in allowed:
        print(
            f"qlink image {action}: error: --out: {out} must end in {' or '.join(allowed)}", file=sys.stderr
        )
        return EXIT_USAGE
    if not args.force and (out.exists() or out.is_symlink()):
        return _exists(action, out)
    return None


def _exists(action: str, out: Path) -> int:
    print(f"qlink image {action}: error: --out: {out} exists; add --force to replace it", file=sys.stderr)
    return EXIT_USAGE


def _fail(action: str, exc: _Refused) -> int:
    print(f"qlink image {action}: error: {exc.name}: {exc.problem}", file=sys.stderr)
    return EXIT_FAILURE


def _result(
    action: str, args: argparse.Namespace, image: np.ndarray, size: int, started: float, **extra: Any
) -> dict[str, Any]:
    return {
        "command": action,
        "input": str(args.input),
        "output": str(args.out),
        **extra,
        "shape": list(image.shape),
        "dtype": image.dtype.name,
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 4),
    }


def _report(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    shape = result["shape"]
    colour = "RGB" if len(shape) == 3 else "gray"
    source = f" ({result['format']})" if "format" in result else ""
    print(
        f"{result['input']}{source} -> {result['output']}: {shape[1]}x{shape[0]} {colour} {result['dtype']}, "
        f"{result['bytes']:,} bytes in {result['seconds']:.3f} s"
    )
    if "note" in result:
        print(f"note: {result['note']}")
    return EXIT_OK
