"""The one polling helper the tests use to wait for a condition (a server ready, a key in the pool, a
transfer delivered): it returns the first truthy value the probe gives and fails the test, naming what
it waited for and the last value seen, when the deadline passes. Never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

import pytest

T = TypeVar("T")

DEADLINE_S = 60.0
"""Generous: the shared 2-core machine can stall for seconds; a condition that holds ends the wait at once."""
EVERY_S = 0.05


def wait_for(
    probe: Callable[[], T | None], what: str, *, timeout: float = DEADLINE_S, every: float = EVERY_S
) -> T:
    """Call `probe` until it returns something truthy and return that; fail after `timeout` seconds.
    (A probe that answers "not yet" with None gives back its other type: the value is never None.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
        time.sleep(every)


# Two forms, so that mypy infers T from an async probe too (a single union parameter leaves it unsolved).
@overload
async def wait_for_async(
    probe: Callable[[], Awaitable[T | None]], what: str, *, timeout: float = ..., every: float = ...
) -> T: ...
@overload
async def wait_for_async(
    probe: Callable[[], T | None], what: str, *, timeout: float = ..., every: float = ...
) -> T: ...
async def wait_for_async(
    probe: Callable[[], T | Awaitable[T | None] | None],
    what: str,
    *,
    timeout: float = DEADLINE_S,
    every: float = 0.02,
) -> T:
    """`wait_for` inside an event loop: the probe may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        value = await answer if isinstance(answer, Awaitable) else answer
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(every)
