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


def test_jitter_shortens_each_delay_by_a_random_share_within_its_bound() -> None:
    # Regression (issue 16): every link and sender cut by one partition redialled in lockstep.
    plain = Backoff(first_s=1.0, longest_s=1.0)
    jittered = Backoff(first_s=1.0, longest_s=1.0, jitter=0.5)
    delays = [jittered.delay() for _ in range(200)]
    assert plain.delay() == 1.0
    assert all(0.5 <= d <= 1.0 for d in delays)
    # 200 draws from U[0.5, 1]: their spread is ~0.5 and fewer than 3 distinct values has odds ~1e-100.
    assert len(set(delays)) > 150 and max(delays) - min(delays) > 0.4


def test_jitter_outside_zero_to_one_is_refused() -> None:
    for jitter in (-0.1, 1.0):
        with pytest.raises(ValueError, match="jitter"):
            Backoff(first_s=0.1, longest_s=1.0, jitter=jitter)
