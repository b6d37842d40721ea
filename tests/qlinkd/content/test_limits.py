"""Bounded input (issue 14, item 2): every kind has a size limit, checked before parsing, with one message
naming the file and the limit; a deflated DICOM data set and a PNG/JPEG are decoded no further than their
bounds; and `ContentValidator` validates in worker processes, off the event loop, under a memory budget.

The decompression bombs are built by `dicom_factory.make_deflate_bomb`: zeros deflate ~1000:1."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from qlinkmed.qlinkd.content import validate
from qlinkmed.qlinkd.content.limits import (
    DATASET_SLACK_BYTES,
    DEFAULT_LIMITS,
    MAX_EHR_BYTES,
    ContentLimits,
    check_size,
)
from qlinkmed.qlinkd.content.validate import WARM_UP_MESSAGES
from qlinkmed.qlinkd.content.worker import INLINE_TEXT_BYTES, ContentValidator, FileSlice
from qlinkmed.qlinkd.errors import ContentError
from tests.dicom_factory import make_deflate_bomb, make_image_dicom
from tests.polling import wait_for

MIB = 1 << 20


def refused(name: str, data: bytes, limits: ContentLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ContentError) as caught:
        validate(name, data, limits)
    assert caught.value.name == name
    return caught.value.problem


# ---- deflated DICOM -----------------------------------------------------------------------------------


def test_a_bomb_declaring_more_pixel_data_than_the_limit_is_refused_before_inflating() -> None:
    # 32768 x 16384 at 16 bits declares 1 GiB; only 8 MiB of zeros follow (the refusal comes first).
    bomb = make_deflate_bomb(32768, 16384, bits=16, zeros=8 * MIB)
    tracemalloc.start()
    try:
        problem = refused("bomb.dcm", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problem == (
        "the deflated data set declares 1,073,741,824 bytes of pixel data (32768 x 16384 x 1 frame(s) x "
        "1 sample(s) at 16 bits), over the 536,870,912-byte limit for decoded content"
    )
    assert peak < 4 * MIB  # one inflation step, not the 8 MiB that follow


def test_an_honest_bomb_within_a_lowered_limit_is_refused_by_its_declaration() -> None:
    bomb = make_deflate_bomb(2048, 2048, bits=16)  # 8 MiB of zeros, declared honestly
    assert validate("fine.dcm", bomb).rows == 2048
    problem = refused("bomb.dcm", bomb, ContentLimits(max_decoded_bytes=4 * MIB))
    assert "declares 8,388,608 bytes of pixel data" in problem
    assert "over the 4,194,304-byte limit for decoded content" in problem


def test_a_bomb_declaring_a_small_image_stops_inflating_at_its_declared_size_and_the_slack() -> None:
    bomb = make_deflate_bomb(512, 512, bits=16, zeros=64 * MIB)  # 512 KiB declared, 64 MiB inside
    tracemalloc.start()
    try:
        problem = refused("small.dcm", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = 512 * 512 * 2 + DATASET_SLACK_BYTES
    assert problem.startswith(f"the deflated data set inflates beyond {limit:,} bytes, the limit for 524,288")
    # pydicom's one zlib.decompress held all 64 MiB; the bounded inflation holds its limit and a step.
    assert peak < limit + 4 * MIB


def test_deflated_files_within_their_bounds_still_validate() -> None:
    bundled = Path(get_testdata_file("image_dfl.dcm", download=False) or "")
    info = validate("image_dfl.dcm", bundled.read_bytes())
    assert info.transfer_syntax == DeflatedExplicitVRLittleEndian and info.rows
    made = make_image_dicom(
        64, 48, frames=2, samples=3, bits=8, transfer_syntax=DeflatedExplicitVRLittleEndian
    )
    info = validate("made.dcm", made)
    assert (info.rows, info.columns, info.number_of_frames, info.samples_per_pixel) == (64, 48, 2, 3)


def test_a_cut_deflate_stream_is_refused_as_truncated() -> None:
    whole = make_image_dicom(64, 64, transfer_syntax=DeflatedExplicitVRLittleEndian)
    problem = refused("cut.dcm", whole[: len(whole) - 40])
    assert problem == "truncated DICOM file: the deflate stream of the data set is cut short"


# ---- PNG/JPEG and sizes -------------------------------------------------------------------------------


def test_a_png_decoding_past_the_limit_is_refused_before_it_is_decoded() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1500, 2000, 3), dtype=np.uint8), "RGB").save(buffer, format="PNG")
    data = buffer.getvalue()  # a few KB: zeros compress as well here
    assert validate("ok.png", data).width == 2000
    problem = refused("big.png", data, ContentLimits(max_decoded_bytes=8 * MIB))
    assert problem == "PNG 2000 x 1500 decodes to 12,000,000 bytes, over the 8,388,608-byte limit"


def test_size_limits_name_the_file_and_the_limit_of_its_kind() -> None:
    hl7 = b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r" + b"PID|1||" + b"x" * MAX_EHR_BYTES + b"\r"
    assert refused("big.hl7", hl7) == (
        f"{len(hl7):,} bytes is over the 8,388,608-byte limit for an EHR message (FHIR JSON or HL7 v2)"
    )
    dicom = make_image_dicom(64, 64)
    assert refused("scan.dcm", dicom, ContentLimits(max_file_bytes=4096)) == (
        f"{len(dicom):,} bytes is over the 4,096-byte limit for a DICOM, PNG or JPEG file"
    )
    with pytest.raises(ContentError, match=r"^huge\.dcm: 1,073,741,824 bytes is over the 536,870,912"):
        check_size("huge.dcm", dicom[:132], 1 << 30, DEFAULT_LIMITS)


# ---- the worker processes -----------------------------------------------------------------------------


@pytest.fixture
def validator() -> object:
    pool = ContentValidator(ContentLimits(max_decoded_bytes=1 << 30), workers=1, memory_bytes=96 * MIB)
    yield pool
    pool.close()


def test_validation_waits_in_the_worker_while_the_event_loop_runs(
    validator: ContentValidator, tmp_path: Path
) -> None:
    """The worker reads a FIFO nobody has written yet: validation cannot finish, and the loop must still
    run other work meanwhile (it froze for the whole parse when validation ran on it)."""
    fifo = tmp_path / "slow.dcm"
    os.mkfifo(fifo)
    data = make_image_dicom(32, 32)

    async def scenario() -> None:
        await validator.start()
        checking = asyncio.create_task(validator.validate("slow.dcm", FileSlice(str(fifo), 0, len(data))))
        other = asyncio.Event()
        asyncio.get_running_loop().call_soon(other.set)
        await asyncio.wait_for(other.wait(), 10)
        assert not checking.done()  # the loop ran while the file was being checked
        await asyncio.to_thread(fifo.write_bytes, data)
        info = await asyncio.wait_for(checking, 30)
        assert info.rows == 32

    asyncio.run(scenario())


def test_a_file_needing_more_than_the_budget_is_refused_and_the_worker_serves_on(
    validator: ContentValidator,
) -> None:
    big = make_deflate_bomb(8192, 8192, bits=16)  # 128 MiB declared and present: over the 96 MiB budget

    async def scenario() -> None:
        await validator.start()
        with pytest.raises(ContentError) as caught:
            await validator.validate("big.dcm", big)
        assert caught.value.name == "big.dcm"
        assert caught.value.problem == (
            "validating it needs more than the 100,663,296-byte memory budget of a validator"
        )
        assert (await validator.validate("small.dcm", make_image_dicom(16, 16))).rows == 16

    asyncio.run(scenario())


def test_a_killed_worker_is_replaced_and_close_leaves_no_process(validator: ContentValidator) -> None:
    async def scenario() -> list[int]:
        await validator.start()
        (first,) = validator.worker_pids()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie", "kill")
        assert (await validator.validate("a.dcm", make_image_dicom(16, 16))).rows == 16
        pids = validator.worker_pids()
        assert pids and first not in pids
        return pids

    pids = asyncio.run(scenario())
    validator.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_pool_already_known_broken_is_rebuilt_not_raised(validator: ContentValidator) -> None:
    # Regression: once the pool's manager thread had seen a worker die, submit itself raised
    # BrokenProcessPool, outside the retry, and the file failed with a traceback instead of a new pool.
    async def scenario() -> int | None:
        await validator.start()
        (first,) = validator.worker_pids()
        executor = validator._executor
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: executor is not None and bool(executor._broken), "the pool to notice the kill")
        return (await validator.validate("a.dcm", make_image_dicom(16, 16))).rows

    assert asyncio.run(scenario()) == 16
    validator.close()


_HOLDER = """
import asyncio, sys
from qlinkmed.qlinkd.content.worker import ContentValidator

async def main():
    validator = ContentValidator(workers=1)
    await validator.start()
    print(*validator.worker_pids(), flush=True)
    sys.stdin.read()  # until the test kills us

asyncio.run(main())
"""


def test_the_workers_of_a_daemon_killed_with_sigkill_exit_too() -> None:
    # Regression: a daemon killed with -9 (or by the OOM killer) left its validator workers running,
    # orphaned, each holding the validators' memory (the pool's pipes never tell them).
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        workers = [int(pid) for pid in holder.stdout.readline().split()]
        assert workers and all(psutil.Process(pid).ppid() == holder.pid for pid in workers)
    finally:
        holder.kill()
        holder.wait()

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def gone() -> bool:
        return not any(running(pid) for pid in workers)

    wait_for(gone, "the orphaned validator workers to exit", timeout=30)


def test_small_ehr_messages_are_checked_here_and_files_that_can_inflate_in_a_worker(
    validator: ContentValidator,
) -> None:
    # A closed validator has no worker pool: what still validates was never sent to one.
    validator.close()
    for name, data in WARM_UP_MESSAGES:  # a FHIR Bundle and an HL7 v2 message, a few hundred bytes
        assert len(data) <= INLINE_TEXT_BYTES
        assert asyncio.run(validator.validate(name, data)).size == len(data)
        assert validator.validate_blocking(name, data).size == len(data)
    image = make_image_dicom(16, 16)
    assert len(image) <= INLINE_TEXT_BYTES
    with pytest.raises(RuntimeError, match="closed"):
        validator.validate_blocking("small.dcm", image)
    big_hl7 = WARM_UP_MESSAGES[1][1] + b"\rNTE|1||" + b"x" * INLINE_TEXT_BYTES
    with pytest.raises(RuntimeError, match="closed"):
        validator.validate_blocking("big.hl7", big_hl7)
