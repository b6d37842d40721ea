"""Content at rest (qlinkd.content.at_rest): native DICOM kept as cipher images, everything else under
AES-256-GCM; opening gives back the original bytes exactly, and a wrong key or any changed, cut or
extended blob is refused with IntegrityError.

Every pydicom bundled file with native pixel data is sealed and opened (offline, `download=False`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from qlinkmed.qcore.errors import IntegrityFailure
from qlinkmed.qlinkd.content import (
    FORM_AEAD,
    FORM_CIPHER_IMAGE,
    ContentInfo,
    at_rest,
    at_rest_form,
    open_at_rest,
    seal_at_rest,
    validate,
)
from qlinkmed.qlinkd.errors import ContentError, IntegrityError, KeyMaterialShort
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, make_ct_study, make_image_dicom
from tests.paths import DATA

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PYDICOM_DATA = Path(get_testdata_file("CT_small.dcm", download=False) or "").parent

# Bundled files with native pixel data that validation refuses, and why.
REFUSED = {
    "MR_truncated.dcm": "truncated DICOM file",
    "badVR.dcm": "NumberOfFrames is not an integer",
    "nested_priv_SQ.dcm": "no SOPClassUID",
}
# Bundled native files the image cipher cannot carry (1 or 32 bits, 8 bits big-endian, YBR 4:2:2,
# deflated): stored whole under AEAD. Every other readable native instance must be a cipher image.
AEAD_NATIVE = {
    "ExplVR_BigEnd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "liver_expb_1frame.dcm",
    "rtdose.dcm",
    "rtdose_1frame.dcm",
    "rtdose_expb.dcm",
    "rtdose_expb_1frame.dcm",
}


def seal(name: str, data: bytes, key: bytes = KEY) -> bytes:
    return seal_at_rest(name, data, validate(name, data), key)


def pydicom_file(name: str) -> bytes:
    return (PYDICOM_DATA / name).read_bytes()


def native_pixel_files() -> list[Path]:
    found = []
    for path in sorted(PYDICOM_DATA.rglob("*")):
        if not path.is_file() or path.name.startswith("DICOMDIR"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, defer_size=256)
        except Exception:  # not DICOM at all: pydicom cannot read it
            continue
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
            found.append(path)
    return found


NATIVE_FILES = native_pixel_files()


def test_the_bundled_sweep_is_not_vacuous() -> None:
    names = {p.name for p in NATIVE_FILES}
    assert len(NATIVE_FILES) >= 50
    assert {"CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm", *REFUSED, *AEAD_NATIVE} <= names


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's remarks on odd test files
@pytest.mark.parametrize("path", NATIVE_FILES, ids=lambda p: str(p.relative_to(PYDICOM_DATA)))
def test_bundled_native_dicom_round_trip_is_bit_exact(path: Path) -> None:
    data = path.read_bytes()
    if path.name in REFUSED:
        with pytest.raises(ContentError, match=REFUSED[path.name]):
            validate(path.name, data)
        return
    blob = seal(path.name, data)
    expected = FORM_AEAD if path.name in AEAD_NATIVE else FORM_CIPHER_IMAGE
    assert at_rest_form(blob) == expected
    assert open_at_rest(blob, KEY) == data


@pytest.mark.parametrize(
    ("kwargs", "frames"),
    [
        ({"rows": 40, "cols": 30, "frames": 4, "bits": 16}, 4),
        ({"rows": 20, "cols": 30, "frames": 3, "bits": 8, "samples": 3}, 3),
        ({"rows": 17, "cols": 5, "bits": 16, "transfer_syntax": ExplicitVRBigEndian}, 1),
        ({"rows": 9, "cols": 12, "frames": 2, "bits": 8, "transfer_syntax": ImplicitVRLittleEndian}, 2),
        ({"rows": 3, "cols": 3, "bits": 8}, 1),  # 9 bytes of pixels: an odd length, padded to 10
    ],
)
def test_synthetic_native_dicom_is_cipher_image(kwargs: dict, frames: int) -> None:
    data = make_image_dicom(**kwargs)
    blob = seal("image.dcm", data)
    assert at_rest_form(blob) == FORM_CIPHER_IMAGE
    assert blob.count(b"QIMG") == frames  # one qcore cipher-image container per frame
    assert open_at_rest(blob, KEY) == data


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm"])
def test_compressed_dicom_falls_back_to_aead(name: str) -> None:
    data = pydicom_file(name)
    blob = seal(name, data)
    assert at_rest_form(blob) == FORM_AEAD
    assert open_at_rest(blob, KEY) == data


def png_and_jpeg() -> list[tuple[str, bytes]]:
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    out = []
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt)
        out.append((fmt, buffer.getvalue()))
    return out


@pytest.mark.parametrize(("name", "data"), png_and_jpeg())
def test_png_and_jpeg_are_aead(name: str, data: bytes) -> None:
    blob = seal(name, data)
    assert at_rest_form(blob) == FORM_AEAD
    assert open_at_rest(blob, KEY) == data
    assert data[40:80] not in blob


@pytest.mark.parametrize("name", ["fhir_bundle.json", "oru_r01.hl7"])
def test_ehr_content_is_aead_and_hidden(name: str) -> None:
    data = (DATA / name).read_bytes()
    blob = seal(name, data)
    assert at_rest_form(blob) == FORM_AEAD
    assert b"Qlinktest" in data and b"Qlinktest" not in blob
    assert open_at_rest(blob, KEY) == data


def test_cipher_image_blob_hides_patient_and_pixels() -> None:
    data = make_ct_study(1, 64, 64)[0]
    info = validate("slice.dcm", data)
    offset = info.pixel_data_offset or 0
    pixel_run = data[offset + 4000 : offset + 4048]
    for secret in (PATIENT_NAME.encode(), PATIENT_ID.encode(), pixel_run, b"20240604"):
        assert secret in data
    blob = seal_at_rest("slice.dcm", data, info, KEY)
    assert at_rest_form(blob) == FORM_CIPHER_IMAGE
    for secret in (PATIENT_NAME.encode(), PATIENT_ID.encode(), pixel_run, b"20240604"):
        assert secret not in blob


def test_seal_is_fresh_each_time() -> None:
    data = make_ct_study(1, 16, 16)[0]
    first, second = seal("a.dcm", data), seal("a.dcm", data)
    assert first != second
    assert open_at_rest(first, KEY) == open_at_rest(second, KEY) == data


def test_large_ct_slice_round_trip() -> None:
    data = make_ct_study(1, 512, 512, seed=7)[0]
    blob = seal("ct.dcm", data)
    assert at_rest_form(blob) == FORM_CIPHER_IMAGE
    assert len(blob) - len(data) < 1024  # the cipher image adds its padding only when not 2^n x 2^n
    assert open_at_rest(blob, KEY) == data


# Refusals -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_blobs() -> dict[str, tuple[bytes, bytes]]:
    ct = make_ct_study(1, 8, 8)[0]
    hl7 = (DATA / "oru_r01.hl7").read_bytes()
    return {FORM_CIPHER_IMAGE: (ct, seal("ct.dcm", ct)), FORM_AEAD: (hl7, seal("oru.hl7", hl7))}


@pytest.mark.parametrize("form", [FORM_CIPHER_IMAGE, FORM_AEAD])
def test_wrong_key_is_refused(small_blobs: dict[str, tuple[bytes, bytes]], form: str) -> None:
    _, blob = small_blobs[form]
    with pytest.raises(IntegrityError) as caught:
        open_at_rest(blob, OTHER_KEY)
    assert caught.value.reason is IntegrityFailure.TAG


@pytest.mark.parametrize("form", [FORM_CIPHER_IMAGE, FORM_AEAD])
def test_every_flipped_byte_is_refused(small_blobs: dict[str, tuple[bytes, bytes]], form: str) -> None:
    data, blob = small_blobs[form]
    assert at_rest_form(blob) == form and open_at_rest(blob, KEY) == data
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(IntegrityError):
            open_at_rest(bytes(changed), KEY)


@pytest.mark.parametrize("form", [FORM_CIPHER_IMAGE, FORM_AEAD])
def test_cut_or_extended_blob_is_refused(small_blobs: dict[str, tuple[bytes, bytes]], form: str) -> None:
    _, blob = small_blobs[form]
    for cut in range(len(blob)):
        with pytest.raises(IntegrityError):
            open_at_rest(blob[:cut], KEY)
    with pytest.raises(IntegrityError) as caught:
        open_at_rest(blob + b"\x00", KEY)
    assert caught.value.reason is IntegrityFailure.TRUNCATED


def test_frames_cannot_be_swapped_between_blobs() -> None:
    one, two = make_ct_study(2, 8, 8)
    blob_one, blob_two = seal("1.dcm", one), seal("2.dcm", two)
    cut_one, cut_two = blob_one.index(b"QIMG") - 8, blob_two.index(b"QIMG") - 8
    assert blob_one[:cut_one] != blob_two[:cut_two]
    with pytest.raises(IntegrityError):
        open_at_rest(blob_one[:cut_one] + blob_two[cut_two:], KEY)


def test_multi_chunk_aead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(at_rest, "CHUNK_BYTES", 100)
    data = (DATA / "oru_r01.hl7").read_bytes()
    blob = seal("oru.hl7", data)
    assert open_at_rest(blob, KEY) == data
    header = at_rest._HEADER.size
    chunk = 100 + at_rest.TAG_BYTES
    first, second = blob[header : header + chunk], blob[header + chunk : header + 2 * chunk]
    assert len(blob) > header + 3 * chunk  # several chunks
    swapped = blob[:header] + second + first + blob[header + 2 * chunk :]
    with pytest.raises(IntegrityError):
        open_at_rest(swapped, KEY)


def test_not_a_blob_is_refused() -> None:
    for junk in (b"", b"QLAR", b"PK\x03\x04" + bytes(60)):
        with pytest.raises(IntegrityError):
            open_at_rest(junk, KEY)
        with pytest.raises(IntegrityError):
            at_rest_form(junk)


def test_short_key_and_mismatched_info_are_refused() -> None:
    data = make_ct_study(1, 8, 8)[0]
    info = validate("a.dcm", data)
    with pytest.raises(KeyMaterialShort):
        seal_at_rest("a.dcm", data, info, KEY[:16])
    with pytest.raises(KeyMaterialShort):
        open_at_rest(seal_at_rest("a.dcm", data, info, KEY), KEY[:31])
    other = make_ct_study(1, 8, 8, seed=1)[0]
    with pytest.raises(ContentError) as caught:
        seal_at_rest("b.dcm", other, info, KEY)
    assert caught.value.name == "b.dcm" and "does not describe these bytes" in caught.value.problem


def test_seal_falls_back_when_frames_would_not_reproduce_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_ct_study(1, 16, 16)[0]
    info: ContentInfo = validate("a.dcm", data)

    def lossy(image: np.ndarray, order: int) -> memoryview:
        return memoryview(image.astype(np.uint8).tobytes())

    monkeypatch.setattr(at_rest, "_encode", lossy)
    blob = seal_at_rest("a.dcm", data, info, KEY)
    assert at_rest_form(blob) == FORM_AEAD
    assert open_at_rest(blob, KEY) == data
