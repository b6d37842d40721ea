"""The shells' task groups: a child's error comes out on its own, but never in place of a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from qlinkmed.qlinkd.dataplane.tasks import group_outcome
from qlinkmed.qlinkd.errors import SessionClosed


async def _session(*, fail_after: int) -> None:
    """A shell's shape: a task group whose reader fails (the peer closed) while the body waits."""

    async def reader() -> None:
        for _ in range(fail_after):
            await asyncio.sleep(0)
        raise SessionClosed("receiver closed the connection")

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(reader())
            await asyncio.Event().wait()
    except BaseExceptionGroup as errors:
        raise group_outcome(errors) from None


@pytest.mark.asyncio
async def test_a_child_error_comes_out_on_its_own() -> None:
    with pytest.raises(SessionClosed, match="receiver closed"):
        await _session(fail_after=1)


@pytest.mark.asyncio
async def test_a_stop_that_meets_a_child_error_stays_a_stop() -> None:
    # Regression: a daemon stopping while its peer closed the data session in the same moment got the
    # SessionClosed instead of the cancellation, reconnected, and hung in its shutdown until killed.
    task = asyncio.create_task(_session(fail_after=0))
    await asyncio.sleep(0)  # the group is open and the reader scheduled
    task.cancel()  # the stop arrives as the reader fails
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
