"""What the data plane's asyncio shells share about their task groups."""

from __future__ import annotations


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a task group (the first, inside nested groups), to re-raise on its own: the
    callers name the errors they handle (a peer that broke the protocol, a lost connection), which a group
    would hide from their ``except`` clauses. The group holds more than one only when tasks failed in the
    same loop iteration; the first is the cause, the rest its consequences."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
