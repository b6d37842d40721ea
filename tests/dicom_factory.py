"""Synthetic DICOM Part 10 files for tests, benchmarks and end-to-end runs.

Deterministic: the same arguments give the same bytes (UIDs are derived from the seed with pydicom's
`generate_uid(entropy_srcs=...)`, dates are fixed, pixels come from `np.random.default_rng(seed)`).
Fast enough for studies of hundreds of megabytes: the phantom is computed once with numpy and each slice
only adds a vectorised noise draw; there is no Python loop over pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

PATIENT_NAME = "QLINKTEST^ALICE^SYNTHETIC"
"""A distinctive patient name, so tests can search sealed bytes for it."""
PATIENT_ID = "QLT-0042"


def make_ct_study(
    n_instances: int,
    rows: int,
    cols: int,
    study_uid: str | None = None,
    seed: int = 0,
    *,
    patient_name: str = PATIENT_NAME,
) -> list[bytes]:
    """A CT study of `n_instances` single-frame slices, `rows` x `cols`, 16 bits allocated (12 stored),
    MONOCHROME2, Explicit VR Little Endian; one series; PixelData is the last element of each file.
    `study_uid` defaults to one derived from `seed`."""
    if n_instances < 1 or rows < 1 or cols < 1:
        raise ValueError("n_instances, rows and cols must be positive")
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid(entropy_srcs=["qlink synthetic study", str(seed)])
    series_uid = generate_uid(entropy_srcs=["qlink synthetic series", study_uid, str(seed)])
    phantom = _phantom(rows, cols)
    ds = _base_dataset(CTImageStorage, "CT", study_uid, series_uid, patient_name)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.KVP = "120"
    _set_pixel_module(ds, rows, cols, frames=1, bits=16, samples=1)
    ds.BitsStored = 12
    ds.HighBit = 11
    files = []
    for i in range(n_instances):
        sop_uid = generate_uid(entropy_srcs=["qlink synthetic instance", series_uid, str(seed), str(i)])
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        z = f"{-1.25 * i:.2f}"
        ds.ImagePositionPatient = ["-180", "-180", z]
        ds.SliceLocation = z
        noise = rng.integers(0, 48, size=(rows, cols), dtype=np.uint16)
        ds.PixelData = np.add(phantom, noise, dtype=np.uint16).tobytes()
        files.append(_write(ds))
    return files


def make_image_dicom(
    rows: int,
    cols: int,
    *,
    frames: int = 1,
    bits: int = 16,
    samples: int = 1,
    seed: int = 0,
    study_uid: str | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    omit: Sequence[str] = (),
    patient_name: str = PATIENT_NAME,
) -> bytes:
    """One Secondary Capture instance with native pixel data: `frames` frames of `rows` x `cols`,
    `bits` (8 or 16) allocated, `samples` 1 (MONOCHROME2) or 3 (RGB, planar configuration 0). Keywords
    in `omit` are deleted before writing (to build a broken file)."""
    if bits not in (8, 16) or samples not in (1, 3):
        raise ValueError("bits must be 8 or 16 and samples 1 or 3")
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid(entropy_srcs=["qlink synthetic study", str(seed)])
    series_uid = generate_uid(entropy_srcs=["qlink synthetic series", study_uid, str(seed)])
    ds = _base_dataset(SecondaryCaptureImageStorage, "OT", study_uid, series_uid, patient_name)
    sop_uid = generate_uid(entropy_srcs=["qlink synthetic image", series_uid, str(seed)])
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.InstanceNumber = 1
    _set_pixel_module(ds, rows, cols, frames=frames, bits=bits, samples=samples)
    shape = (frames, rows, cols) + ((3,) if samples == 3 else ())
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    if transfer_syntax.is_little_endian:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    for keyword in omit:
        delattr(ds, keyword)
    return _write(ds)


def make_deflate_bomb(
    rows: int, cols: int, *, frames: int = 1, bits: int = 16, zeros: int | None = None
) -> bytes:
    """A Secondary Capture instance in the Deflated Explicit VR Little Endian transfer syntax whose pixel
    data is `zeros` zero bytes (default: exactly what `rows` x `cols` x `frames` at `bits` declares). Zeros
    deflate about 1000:1, so 1 GiB of them is a 1 MB file: a decompression bomb when `zeros` is large,
    whether the header declares that size honestly or declares a small image. Built as a stream, never
    holding the inflated data set in memory."""
    declared = rows * cols * frames * bits // 8
    zeros = declared if zeros is None else zeros
    if zeros % 2 or zeros >= 1 << 32:
        raise ValueError("the pixel data must have an even length below 4 GiB")
    study_uid = generate_uid(entropy_srcs=["qlink deflate bomb", str(rows), str(cols), str(zeros)])
    series_uid = generate_uid(entropy_srcs=["qlink deflate bomb series", study_uid])
    ds = _base_dataset(SecondaryCaptureImageStorage, "OT", study_uid, series_uid, PATIENT_NAME)
    sop_uid = generate_uid(entropy_srcs=["qlink deflate bomb instance", study_uid])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    _set_pixel_module(ds, rows, cols, frames=frames, bits=bits, samples=1)
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    # PixelData (7FE0,0010) OW, then its value: the zeros, compressed a block at a time.
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, zeros))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body.getvalue())]
    block = bytes(1 << 20)
    left = zeros
    while left:
        step = min(left, len(block))
        parts.append(deflater.compress(block[:step]))
        left -= step
    parts.append(deflater.flush())
    return out.getvalue() + b"".join(parts)


def _phantom(rows: int, cols: int) -> np.ndarray:
    """A water disc (CT number ~0, stored 1024) with a denser ring, in air (stored 0)."""
    y, x = np.ogrid[:rows, :cols]
    r = np.hypot((y - rows / 2) / (rows / 2), (x - cols / 2) / (cols / 2))
    image = np.where(r < 0.8, 1024, 24).astype(np.uint16)
    image[(r > 0.7) & (r < 0.8)] = 1900
    return image


def _base_dataset(sop_class: UID, modality: str, study: str, series: str, patient_name: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240604"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "QLT-ACC-1"
    ds.Modality = modality
    ds.Manufacturer = "qlink test factory"
    ds.PatientName = patient_name
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    return ds


def _set_pixel_module(ds: Dataset, rows: int, cols: int, *, frames: int, bits: int, samples: int) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0


def _write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
