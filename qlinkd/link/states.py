"""The link machine's states, its inputs and the table of transitions between them.

Every rule about which input is allowed in which state lives here, and it judges the peer's inputs and
our own calls alike: ``LinkConnection`` (``machine.py``) performs a transition only when this table
names it. A peer input missing from the table is a protocol violation (the round ends, or the link when
there is no round); a call of ours or a consequence missing from it is a bug (``LocalProtocolError``).
"""

from __future__ import annotations

from enum import Enum, auto


class Role(Enum):
    ALICE = "alice"
    BOB = "bob"


class State(Enum):
    EXPECT_HELLO = auto()
    IDLE = auto()
    AWAIT_CHANNEL = auto()
    DISTILLING = auto()
    AWAIT_CONFIRMATION = auto()
    CLOSED = auto()


class Input(Enum):
    # from the peer
    HELLO = auto()
    ROUND_START = auto()
    DISTILL = auto()
    KEY_STORED = auto()
    NOTICE = auto()
    NOTICE_ACK = auto()
    # from the caller
    BEGIN_ROUND = auto()
    CHANNEL_RESULT = auto()
    STORED = auto()
    SEND_NOTICE = auto()
    NOTICE_STORED = auto()
    TIMER = auto()
    # consequences inside the machine of one of the inputs above
    KEY_AGREED = auto()
    ROUND_ENDED = auto()
    CLOSE = auto()


PEER_INPUTS = frozenset(
    {Input.HELLO, Input.ROUND_START, Input.DISTILL, Input.KEY_STORED, Input.NOTICE, Input.NOTICE_ACK}
)
"""Inputs the peer causes: one outside the table is a protocol violation (the round or link ends)."""
CONSEQUENCES = frozenset({Input.KEY_AGREED, Input.ROUND_ENDED, Input.CLOSE})
"""Inputs the machine gives itself while handling another one."""

_ROUND_STATES = (State.AWAIT_CHANNEL, State.DISTILLING, State.AWAIT_CONFIRMATION)
_LINK_UP = (State.IDLE, *_ROUND_STATES)

TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.EXPECT_HELLO, Input.HELLO): State.IDLE,
    (State.IDLE, Input.BEGIN_ROUND): State.AWAIT_CHANNEL,
    # A refused round start (replayed, or of other size) is answered with an Abort and leaves IDLE as is.
    (State.IDLE, Input.ROUND_START): State.AWAIT_CHANNEL,
    (State.AWAIT_CHANNEL, Input.CHANNEL_RESULT): State.DISTILLING,
    # Bob's first message may overtake Alice's own channel result: she holds it until then.
    (State.AWAIT_CHANNEL, Input.DISTILL): State.AWAIT_CHANNEL,
    (State.DISTILLING, Input.DISTILL): State.DISTILLING,
    (State.DISTILLING, Input.KEY_AGREED): State.AWAIT_CONFIRMATION,
    (State.AWAIT_CONFIRMATION, Input.DISTILL): State.AWAIT_CONFIRMATION,
    (State.AWAIT_CONFIRMATION, Input.STORED): State.AWAIT_CONFIRMATION,
    (State.AWAIT_CONFIRMATION, Input.KEY_STORED): State.AWAIT_CONFIRMATION,
    # Key notices travel between rounds and during them; before the hello the outbox waits for it.
    (State.EXPECT_HELLO, Input.SEND_NOTICE): State.EXPECT_HELLO,
    **{
        (s, i): s
        for s in _LINK_UP
        for i in (Input.NOTICE, Input.NOTICE_ACK, Input.SEND_NOTICE, Input.NOTICE_STORED)
    },
    **{(s, Input.TIMER): s for s in State if s is not State.CLOSED},
    # A round ends (committed, aborted or timed out) only from a state that has one.
    **{(s, Input.ROUND_ENDED): State.IDLE for s in _ROUND_STATES},
    **{(s, Input.CLOSE): State.CLOSED for s in State if s is not State.CLOSED},
}
"""(state, input) -> the state it leads to. A peer input outside the table ends the round, or the link
when there is no round; a consequence or a call of ours outside it is a bug (LocalProtocolError)."""
