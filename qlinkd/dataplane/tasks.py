"""What the data plane's asyncio shells share about their task groups."""

from __future__ import annotations

import asyncio


def group_outcome(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise, on its own, for a task group that ended with `group`.

    While the current task is being cancelled (a daemon stopping), that is a ``CancelledError``: a task
    group whose child failed in the same moment raises the child's error and drops the cancellation, and
    a caller that handles the child's error (a lost connection: reconnect) would then carry on as if
    nothing had asked it to stop, and the daemon would hang in its shutdown.

    Otherwise it is the first error (inside nested groups): the callers name the errors they handle (a
    peer that broke the protocol, a lost connection), which a group would hide from their ``except``
    clauses. The group holds more than one only when tasks failed in the same loop iteration; the first
    is the cause, the rest its consequences."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return asyncio.CancelledError()
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
