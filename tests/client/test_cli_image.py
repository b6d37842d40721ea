"""`qlink image encrypt|decrypt|metrics`, run in-process: round trips of every input kind, refusals with
one named line and no output file, and the Wu et al. verdicts on a smooth 512x512 image."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from qlinkmed.client.cli import main
from qlinkmed.qcore.image import metrics
from qlinkmed.qcore.image.container import MAGIC

KEY = bytes(range(32))


def _dicom(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(path)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.bin"
    path.write_bytes(KEY)
    return path


def _png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    if mode == "I;16":
        size = (pixels.shape[1], pixels.shape[0])
        Image.frombytes("I;16", size, pixels.astype("<u2").tobytes()).save(path)
    else:
        Image.fromarray(pixels).save(path)
    return path


def _read_png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def _round_trip(source: Path, key_file: Path, tmp_path: Path, out_name: str) -> Path:
    cipher, out = tmp_path / "c.qimg", tmp_path / out_name
    assert main(["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(cipher)]) == 0
    assert cipher.read_bytes().startswith(MAGIC)
    assert main(["image", "decrypt", str(cipher), "--key-file", str(key_file), "--out", str(out)]) == 0
    return out


def _smooth(side: int, seed: int, channels: int = 1) -> np.ndarray:
    # Gradients, a smooth wave and mild noise: adjacent pixels correlate like a real scan's (~0.99).
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    planes = [
        128 + 80 * np.sin(x / (60 + 7 * c)) * np.cos(y / (45 + 5 * c)) + 0.06 * (x - side / 2)
        for c in range(channels)
    ]
    img = np.stack(planes, axis=-1) + rng.normal(0, 4, (side, side, channels))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


# --- round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype", "mode"),
    [((37, 53), np.uint8, "L"), ((29, 40), np.uint16, "I;16"), ((30, 21, 3), np.uint8, "RGB")],
)
def test_png_round_trip_keeps_mode_and_pixels(
    tmp_path: Path, key_file: Path, shape: tuple[int, ...], dtype: type, mode: str
) -> None:
    pixels = np.random.default_rng(1).integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    source = _png(tmp_path / "in.png", pixels, mode)
    out_mode, out = _read_png(_round_trip(source, key_file, tmp_path, "out.png"))
    assert out_mode == mode
    assert out.dtype == dtype and np.array_equal(out, pixels)


def test_jpeg_round_trip_gives_the_decoded_pixels(tmp_path: Path, key_file: Path) -> None:
    source = tmp_path / "in.jpg"
    Image.fromarray(_smooth(64, 2, 3)).save(source, quality=90)
    _, decoded = _read_png(source)
    out = np.load(_round_trip(source, key_file, tmp_path, "out.npy"))
    assert np.array_equal(out, decoded)


def test_npy_round_trip(tmp_path: Path, key_file: Path) -> None:
    pixels = np.random.default_rng(2).integers(0, 65536, size=(5, 9, 3), dtype=np.uint16)
    np.save(tmp_path / "in.npy", pixels)
    out = np.load(_round_trip(tmp_path / "in.npy", key_file, tmp_path, "out.npy"))
    assert out.dtype == np.uint16 and np.array_equal(out, pixels)


def test_dicom_ct_round_trip_as_twos_complement_words(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _dicom("CT_small.dcm")
    expected = pydicom.dcmread(source).pixel_array
    assert expected.dtype == np.int16  # signed CT: the case the note is about
    cipher, out = tmp_path / "ct.qimg", tmp_path / "ct.npy"
    argv = ["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(cipher), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == [128, 128] and result["dtype"] == "uint16" and result["format"] == "DICOM"
    assert result["bytes"] == cipher.stat().st_size and "view(int16)" in result["note"]
    assert main(["image", "decrypt", str(cipher), "--key-file", str(key_file), "--out", str(out)]) == 0
    assert np.array_equal(np.load(out).view(np.int16), expected)
    png = tmp_path / "ct.png"
    assert main(["image", "decrypt", str(cipher), "--key-file", str(key_file), "--out", str(png)]) == 0
    mode, pixels = _read_png(png)
    assert mode == "I;16" and np.array_equal(pixels.view(np.int16), expected)


def test_dicom_rgb_round_trip(tmp_path: Path, key_file: Path) -> None:
    source = _dicom("examples_rgb_color.dcm")
    expected = pydicom.dcmread(source).pixel_array
    mode, out = _read_png(_round_trip(source, key_file, tmp_path, "out.png"))
    assert mode == "RGB" and np.array_equal(out, expected)


def test_every_encryption_draws_a_fresh_nonce(tmp_path: Path, key_file: Path) -> None:
    source = _png(tmp_path / "in.png", np.zeros((8, 8), dtype=np.uint8))
    blobs = []
    for name in ("a.qimg", "b.qimg"):
        assert (
            main(
                ["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(tmp_path / name)]
            )
            == 0
        )
        blobs.append((tmp_path / name).read_bytes())
    assert blobs[0] != blobs[1]


def test_json_results_name_output_shape_dtype_bytes_and_seconds(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _png(tmp_path / "in.png", np.full((6, 10, 3), 7, dtype=np.uint8))
    cipher, out = tmp_path / "c.qimg", tmp_path / "out.png"
    assert (
        main(["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(cipher), "--json"])
        == 0
    )
    assert (
        main(["image", "decrypt", str(cipher), "--key-file", str(key_file), "--out", str(out), "--json"]) == 0
    )
    enc, dec = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (enc["output"], dec["output"]) == (str(cipher), str(out))
    assert enc["shape"] == dec["shape"] == [6, 10, 3] and enc["dtype"] == dec["dtype"] == "uint8"
    assert (enc["bytes"], dec["bytes"]) == (cipher.stat().st_size, out.stat().st_size)
    assert enc["seconds"] >= 0 and dec["seconds"] >= 0


# --- refusals -------------------------------------------------------------------------------------------


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def cipher_file(tmp_path: Path, key_file: Path) -> Path:
    source = _png(tmp_path / "in.png", np.arange(12 * 9, dtype=np.uint8).reshape(12, 9))
    cipher = tmp_path / "in.qimg"
    assert main(["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(cipher)]) == 0
    return cipher


def _decrypt_refused(cipher: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = cipher.parent / "out.png"
    err = _refused(["image", "decrypt", str(cipher), "--key-file", str(key), "--out", str(out)], capsys)
    assert not out.exists()
    assert [p.name for p in cipher.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert str(cipher) in err or str(key) in err
    return err


def test_wrong_key_exits_1_and_writes_nothing(
    tmp_path: Path, cipher_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(32))
    assert "wrong key" in _decrypt_refused(cipher_file, wrong, capsys)


@pytest.mark.parametrize("where", ["pixel", "nonce", "tag"])
def test_tampered_cipher_image_is_refused(
    cipher_file: Path, key_file: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    blob = bytearray(cipher_file.read_bytes())
    if where == "pixel":
        blob[-1] ^= 0x01
    else:  # one hex digit of the header field, kept valid hex
        at = blob.index(f'"{where}":"'.encode()) + len(where) + 4
        blob[at] = ord("0") if blob[at] != ord("0") else ord("1")
    cipher_file.write_bytes(bytes(blob))
    assert "altered" in _decrypt_refused(cipher_file, key_file, capsys)


@pytest.mark.parametrize("keep", [0, 3, 7, 40, -1])
def test_truncated_cipher_image_is_refused(
    cipher_file: Path, key_file: Path, capsys: pytest.CaptureFixture[str], keep: int
) -> None:
    blob = cipher_file.read_bytes()
    cipher_file.write_bytes(blob[:keep])
    assert "not a valid qlink cipher image" in _decrypt_refused(cipher_file, key_file, capsys)


def test_short_key_file_is_named(
    tmp_path: Path, cipher_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(bytes(31))
    err = _decrypt_refused(cipher_file, short, capsys)
    assert f"{short}: 31 bytes of key material; at least 32 are needed" in err


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("patient notes, not pixels\n"), "not an image"),
        (lambda p: p.write_bytes(_png_bytes()[:60]), "corrupt or truncated PNG"),
        (lambda p: p.write_bytes(_npy_bytes(np.zeros((4, 4)))), "float64"),
        (lambda p: Image.new("RGBA", (4, 4)).save(p, format="PNG"), "transparency"),
        (lambda p: p.write_bytes(_npy_bytes(np.zeros((4, 4, 4), np.uint8))), "shape"),
        (lambda p: p.write_bytes(_npy_bytes(np.zeros((4, 4), np.uint8))[:-3]), "truncated .npy"),
    ],
    ids=["missing", "text", "truncated-png", "float-npy", "rgba", "4-channels", "truncated-npy"],
)
def test_bad_inputs_give_one_named_line(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str], make, problem: str
) -> None:
    source, out = tmp_path / "input.img", tmp_path / "out.qimg"
    make(source)
    err = _refused(["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(out)], capsys)
    assert err.startswith(f"qlink image encrypt: error: {source}: ") and problem in err
    assert not out.exists()


def _png_bytes() -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "problem"),
    [("examples_ybr_color.dcm", "multi-frame DICOM (30 frames)"), ("MR_truncated.dcm", "pixel data")],
)
def test_unusable_dicom_is_refused(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str], name: str, problem: str
) -> None:
    source, out = _dicom(name), tmp_path / "out.qimg"
    err = _refused(["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(out)], capsys)
    assert str(source) in err and problem in err
    assert not out.exists()


def test_output_extension_is_a_usage_error(
    tmp_path: Path, key_file: Path, cipher_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jpg"
    err = _refused(
        ["image", "decrypt", str(cipher_file), "--key-file", str(key_file), "--out", str(out)], capsys, 2
    )
    assert "--out" in err and ".png or .npy" in err
    source = _png(tmp_path / "x.png", np.zeros((2, 2), dtype=np.uint8))
    err = _refused(
        ["image", "encrypt", str(source), "--key-file", str(key_file), "--out", str(out)], capsys, 2
    )
    assert ".qimg" in err
    assert not out.exists()


def test_16_bit_rgb_is_refused_as_png_but_written_as_npy(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pixels = np.random.default_rng(4).integers(0, 65536, size=(3, 4, 3), dtype=np.uint16)
    np.save(tmp_path / "in.npy", pixels)
    cipher = tmp_path / "first.qimg"  # _round_trip writes c.qimg (no --force)
    assert (
        main(
            ["image", "encrypt", str(tmp_path / "in.npy"), "--key-file", str(key_file), "--out", str(cipher)]
        )
        == 0
    )
    png = tmp_path / "out.png"
    err = _refused(["image", "decrypt", str(cipher), "--key-file", str(key_file), "--out", str(png)], capsys)
    assert "16-bit RGB" in err and not png.exists()
    assert np.array_equal(np.load(_round_trip(tmp_path / "in.npy", key_file, tmp_path, "out.npy")), pixels)


# --- metrics --------------------------------------------------------------------------------------------


def _metrics(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["image", "metrics", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_metrics_on_a_smooth_512_image_pass_the_wu_tests(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # At alpha = 0.05 an ideal cipher fails each test 5 % of the time; the seed fixes one draw (the nonce).
    source = _png(tmp_path / "smooth.png", _smooth(512, 7))
    report = _metrics([str(source), "--key-file", str(key_file), "--seed", "1"], capsys)
    assert report["pixels"] == 512 * 512 and report["key"] == "file"
    crit = report["critical"]
    assert round(crit["npcr_min"], 4) == 99.5893
    assert [round(v, 4) for v in crit["uaci_range"]] == [33.3730, 33.5541]
    assert crit["chi_square_max"] == 293.25 and round(crit["entropy_min"], 5) == 7.99919
    gray = report["channels"]["gray"]
    for test in ("key_sensitivity", "plaintext_sensitivity"):
        assert gray[test]["npcr_pass"] and gray[test]["uaci_pass"], gray[test]
    cipher, plain = gray["cipher"], gray["plain"]
    assert cipher["entropy"] >= 7.999 and cipher["entropy_pass"]
    assert cipher["chi_square"] < 293.25 and cipher["chi_square_pass"]
    assert all(abs(r) < 0.01 for r in cipher["correlation"].values())
    assert all(cipher["correlation_pass"].values())
    assert min(plain["correlation"].values()) > 0.95 and plain["entropy"] < 7.5  # the input was smooth
    assert (report["tests"], report["failed"]) == (9, 0)


def test_metrics_are_reproducible_with_a_seed_and_hide_the_key(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _png(tmp_path / "in.png", _smooth(64, 1))
    argv = [str(source), "--key-file", str(key_file), "--seed", "5"]
    first, second = _metrics(argv, capsys), _metrics(argv, capsys)
    assert first["channels"] == second["channels"]
    other = _metrics([str(source), "--key-file", str(key_file), "--seed", "6"], capsys)
    assert other["channels"]["gray"]["cipher"] != first["channels"]["gray"]["cipher"]
    assert main(["image", "metrics", *argv]) == 0
    text = capsys.readouterr().out
    assert KEY.hex() not in text and "(hidden)" in text


def test_metrics_report_rgb_per_channel_in_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _png(tmp_path / "rgb.png", _smooth(64, 3, 3))
    report = _metrics([str(source), "--seed", "2"], capsys)
    assert list(report["channels"]) == ["R", "G", "B"] and report["tests"] == 27
    assert report["key"] == "seeded"
    assert main(["image", "metrics", str(source), "--seed", "2"]) == 0
    text = capsys.readouterr().out
    for heading in ("R ", "G ", "B "):
        assert any(line.startswith(heading) for line in text.splitlines()), heading
    assert text.count("NPCR, key bit flipped") == 3 and "approximations are rough" in text


def test_metrics_on_16_bit_use_the_high_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A 16-bit image whose low bytes are noise and high bytes a smooth ramp: the plain statistics must be
    # those of the ramp, so they were computed on the high byte.
    y, x = np.mgrid[0:64, 0:64]
    high = ((x + y) * 2).astype(np.uint16)
    low = np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint16)
    source = tmp_path / "in.npy"
    np.save(source, (high << 8) | low)
    report = _metrics([str(source), "--seed", "3"], capsys)
    assert report["analysed"] == "high byte of each 16-bit pixel" and report["dtype"] == "uint16"
    plain = report["channels"]["gray"]["plain"]
    assert plain["correlation"]["horizontal"] > 0.99
    assert plain["entropy"] == metrics.entropy(high.astype(np.uint8))
    assert plain["chi_square"] == metrics.chi_square(high.astype(np.uint8))


def test_metrics_mark_undefined_correlations_not_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "row.npy", np.arange(8, dtype=np.uint8).reshape(1, 8))
    report = _metrics([str(tmp_path / "row.npy"), "--seed", "1"], capsys)
    gray = report["channels"]["gray"]
    assert gray["cipher"]["correlation"]["vertical"] is None
    assert gray["cipher"]["correlation_pass"]["vertical"] is None
    assert report["tests"] == 7  # 9 less the two undefined (vertical, diagonal)
