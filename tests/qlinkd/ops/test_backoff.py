"""The reconnect policy every dialling loop uses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from qlinkmed.qlinkd.ops.backoff import Backoff, raise_if_cancelling


def test_delays_grow_by_the_factor_up_to_the_longest_and_reset() -> None:
    backoff = Backoff(first_s=0.1, longest_s=2.0, factor=1.5)
    delays = [backoff.delay() for _ in range(10)]
    assert delays[:3] == pytest.approx([0.1, 0.15, 0.225])
    assert max(delays) == 2.0 and delays[-1] == 2.0
    assert all(b >= a for a, b in itertools.pairwise(delays))
    backoff.reset()
    assert backoff.delay() == 0.1


@pytest.mark.parametrize(("first", "longest", "factor"), [(0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (0.1, 1.0, 0.5)])
def test_nonsense_settings_are_refused(first: float, longest: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first_s=first, longest_s=longest, factor=factor)


@pytest.mark.asyncio
async def test_a_stop_is_not_mistaken_for_a_lost_connection() -> None:
    raise_if_cancelling()  # nothing asked this task to stop: no effect

    async def loop() -> None:
        # What a library that turns a cancellation into a connection error amounts to: it is swallowed.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        raise_if_cancelling()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
