"""The state rule both data-plane machines follow, in one place: every input passes the session table;
an input about a transfer then passes the transfer table, from the idle stage for a transfer the session
does not hold yet. A pair in neither table ends the session (the machine's ``end`` says how). Pure."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from enum import Enum
from typing import Any, Generic, NoReturn, Protocol, TypeVar

Phase = TypeVar("Phase", bound=Enum)
Stage = TypeVar("Stage", bound=Enum)
Input = TypeVar("Input", bound=Enum)


class Staged(Protocol[Stage]):
    """A transfer the machine tracks: the rule moves its stage."""

    stage: Stage


Entry = TypeVar("Entry", bound="Staged[Any]")  # any stage type: each machine pairs its own


class End(Protocol):
    """How a machine ends its session: the peer broke the protocol (`peer`) or our own shell did."""

    def __call__(self, why: str, *, peer: bool) -> NoReturn: ...


class SessionRules(Generic[Phase, Stage, Input]):
    """A session table and a transfer table, and the one move that applies both."""

    def __init__(
        self,
        session: Mapping[tuple[Phase, Input], Phase],
        transfer: Mapping[tuple[Stage, Input], Stage],
        idle: Stage,
    ) -> None:
        self.session = session
        self.transfer = transfer
        self.idle = idle
        self.transfer_inputs = frozenset(what for _, what in transfer)

    def move(
        self,
        phase: Phase,
        what: Input,
        transfer_id: str | None,
        entries: MutableMapping[str, Entry],
        *,
        peer: bool,
        unknown: str,
        end: End,
    ) -> tuple[Phase, Entry | None]:
        """The phase `what` leads to, and the entry of `transfer_id` as it was found (its stage moved; it
        leaves `entries` when it is back at idle); None for a transfer not held yet, whose entry the caller
        of a move out of idle makes. `unknown` says, for the message, where a transfer not held is."""
        next_phase = self.session.get((phase, what))
        if next_phase is None:
            end(f"{what.name.lower()} not expected in {phase.name}", peer=peer)
        entry = None
        if what in self.transfer_inputs:
            if transfer_id is None:
                end(f"{what.name.lower()} names no transfer", peer=False)
            entry = entries.get(transfer_id)
            stage = self.transfer.get((self.idle if entry is None else entry.stage, what))
            if stage is None:
                where = unknown if entry is None else f"in {entry.stage.name}"
                end(f"{what.name.lower()} for transfer {transfer_id}, {where}", peer=peer)
            if entry is not None:
                entry.stage = stage
                if stage is self.idle:
                    del entries[transfer_id]
        return next_phase, entry
