"""The link machine's states, its inputs and the tables of transitions between them.

A link runs several rounds at once (a window of them, so that round trips to a distant peer overlap), so
there are two tables: one for the connection (``LINK_TRANSITIONS``: hello, key notices, round starts,
closing) and one that every open round follows on its own (``ROUND_TRANSITIONS``). Every rule about
which input is allowed where lives here, and it judges the peer's inputs and our own calls alike:
``LinkConnection`` (``machine.py``) performs a transition only when a table names it. A peer input
missing from the round table ends that round (or the link, once the round's key may be stored at either
end); one missing from the link table ends the link. A call of ours or a consequence missing from a
table is a bug (``LocalProtocolError``).
"""

from __future__ import annotations

from enum import Enum, auto


class Role(Enum):
    ALICE = "alice"
    BOB = "bob"


class State(Enum):
    """The connection."""

    EXPECT_HELLO = auto()
    UP = auto()
    """The pools agree; rounds may run (any number up to the window)."""
    CLOSED = auto()


class RoundState(Enum):
    """One open round."""

    AWAIT_CHANNEL = auto()
    DISTILLING = auto()
    AGREED = auto()
    """The round authenticated a key; it waits for its turn to be stored (rounds store in id order)."""
    AWAIT_CONFIRMATION = auto()
    """Stored here; waiting for the peer's proof that it stored the same key."""
    ENDED = auto()


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
"""Inputs the peer causes: one outside the tables is a protocol violation (the round or link ends)."""
ROUND_PEER_INPUTS = frozenset({Input.DISTILL, Input.KEY_STORED})
"""Peer inputs addressed to one round (its id is on the frame)."""
CONSEQUENCES = frozenset({Input.KEY_AGREED, Input.ROUND_ENDED, Input.CLOSE})
"""Inputs the machine gives itself while handling another one."""

LINK_TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.EXPECT_HELLO, Input.HELLO): State.UP,
    # Round starts open a round (the round table takes it from there); a refused one (replayed, of
    # another size, or beyond the window) is answered with an Abort and changes nothing.
    (State.UP, Input.BEGIN_ROUND): State.UP,
    (State.UP, Input.ROUND_START): State.UP,
    # Key notices travel between rounds and during them; before the hello the outbox waits for it.
    (State.EXPECT_HELLO, Input.SEND_NOTICE): State.EXPECT_HELLO,
    **{
        (State.UP, i): State.UP
        for i in (Input.NOTICE, Input.NOTICE_ACK, Input.SEND_NOTICE, Input.NOTICE_STORED, Input.TIMER)
    },
    (State.EXPECT_HELLO, Input.TIMER): State.EXPECT_HELLO,
    **{(s, Input.CLOSE): State.CLOSED for s in State if s is not State.CLOSED},
}
"""(link state, input) -> the link state it leads to."""

_OPEN = (RoundState.AWAIT_CHANNEL, RoundState.DISTILLING, RoundState.AGREED, RoundState.AWAIT_CONFIRMATION)

ROUND_TRANSITIONS: dict[tuple[RoundState, Input], RoundState] = {
    (RoundState.AWAIT_CHANNEL, Input.CHANNEL_RESULT): RoundState.DISTILLING,
    # Bob's first message may overtake Alice's own channel result: she holds it until then.
    (RoundState.AWAIT_CHANNEL, Input.DISTILL): RoundState.AWAIT_CHANNEL,
    (RoundState.DISTILLING, Input.DISTILL): RoundState.DISTILLING,
    (RoundState.DISTILLING, Input.KEY_AGREED): RoundState.AGREED,
    # After the key: the peer's abort (its tag check failed) still reaches the session.
    (RoundState.AGREED, Input.DISTILL): RoundState.AGREED,
    (RoundState.AWAIT_CONFIRMATION, Input.DISTILL): RoundState.AWAIT_CONFIRMATION,
    # The peer's turn to store may come before ours (it agreed first, or our earlier round is slower).
    (RoundState.AGREED, Input.KEY_STORED): RoundState.AGREED,
    (RoundState.AGREED, Input.STORED): RoundState.AWAIT_CONFIRMATION,
    (RoundState.AWAIT_CONFIRMATION, Input.KEY_STORED): RoundState.AWAIT_CONFIRMATION,
    **{(s, Input.TIMER): s for s in _OPEN},
    # A round ends (committed, aborted, timed out or with the link) only from a state that is open.
    **{(s, Input.ROUND_ENDED): RoundState.ENDED for s in _OPEN},
}
"""(round state, input) -> the round state it leads to."""

KEY_HELD = frozenset({RoundState.AGREED, RoundState.AWAIT_CONFIRMATION})
"""Round states in which either end may already have stored the key: a violation there ends the link
(the next hello settles the round from both pools), never just the round."""
