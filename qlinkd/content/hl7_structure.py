"""HL7 v2 message structure by version and trigger event, judged against hl7apy's tables.

hl7apy carries, for every version from 2.1 to 2.8.2, which abstract message structure a message type and
trigger event use (ORU^R01 and ORU^R30 are ORU_R01, ADT^A04 is ADT_A01) and what that structure holds:
its segments and segment groups in order, each with how often it must and may occur, and choices. That
table is the rule table here; hl7apy's own grouping parser is not used, because it places segments
greedily without regard to order (in v2.8 it puts the OBX of a valid ORU_R01 into a group before OBR
and then finds ORC missing).

The structure becomes a finite automaton over segment IDs (a group a sub-expression, repetition a loop,
a choice an alternation), run over the message's segments in linear time with its state sets cached.
Every problem is reported, not only the first:

- a segment the structure has no place for ("segment 3 (EVN): ORU_R01 has no place for EVN here") is
  reported and skipped, and checking goes on;
- a segment the structure has a place for only after required segments that are not there is reported
  as those segments missing ("ADT_A01.EVN: required segment missing before segment 2 (PID)");
- a message that ends before its structure is complete names what it lacks (the shortest completion).

Z segments (site-defined) may appear anywhere, as HL7 allows, and are left out. A message whose type or
trigger event is a Z code, or without a trigger event (a bare "ACK"), or in a version hl7apy has no tables
for (2.9 and later) is judged on its header alone (`ehr.validate_hl7`): its structure is the sites'
agreement, and refusing current messages for our tables' age would block clinical traffic. Field contents
(data types, lengths, code tables) are not judged: interface engines disagree on them far more than on
structure.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hl7apy import load_reference
from hl7apy.exceptions import HL7apyException, UnsupportedVersion

from qlinkmed.qlinkd.content.issues import Issue, IssueCode

MAX_INSERTED = 3
"""A segment out of order is explained as this many missing required segments at most; beyond that it
is reported as having no place where it stands."""
_FINITE_REPEAT = 4
"""A finite maximum above the minimum by more than this is matched as unbounded (none in HL7's tables)."""
CACHE_ENTRIES = 50_000
"""An automaton's memo of state-set moves is dropped when it grows past this: a peer sending random
segment IDs must not grow a daemon's memory without bound."""
MAX_ISSUES = 100
"""Checking stops after this many issues (a file of garbage segments is not worth a longer list)."""

_EVENT_STRUCTURES = {
    **dict.fromkeys(("ADT^A04", "ADT^A08", "ADT^A13"), "ADT_A01"),
    **dict.fromkeys(("ADT^A14", "ADT^A28", "ADT^A31"), "ADT_A05"),
    **dict.fromkeys(("ADT^A07",), "ADT_A06"),
    **dict.fromkeys(("ADT^A10", "ADT^A11", "ADT^A12"), "ADT_A09"),
    **dict.fromkeys(("ADT^A21", "ADT^A22", "ADT^A23", "ADT^A25", "ADT^A26", "ADT^A27"), "ADT_A21"),
    **dict.fromkeys(("ADT^A29", "ADT^A32", "ADT^A33"), "ADT_A21"),
    **dict.fromkeys(("ORU^R31", "ORU^R32"), "ORU_R30"),
    **dict.fromkeys((f"SIU^S{n}" for n in range(13, 27)), "SIU_S12"),
    **dict.fromkeys(("MDM^T03", "MDM^T05", "MDM^T07", "MDM^T09", "MDM^T11"), "MDM_T01"),
    **dict.fromkeys(("MDM^T04", "MDM^T06", "MDM^T08", "MDM^T10"), "MDM_T02"),
}
"""HL7 Table 0354 for the common trigger events that share another event's structure (hl7apy maps a
message to a structure only from MSH-9.3 or as CODE_EVENT). A type and event found neither here nor in
hl7apy's tables is not judged: a missing row in a table is no reason to refuse a message."""


def structure_issues(segments: list[str], version: str, message_type: list[str]) -> list[Issue]:
    """Every structural problem of one message (its segments, CR-split, MSH first), judged against the
    structure its MSH-9 (`message_type`: code, trigger event, structure) names in `version`."""
    headers = [i + 1 for i, segment in enumerate(segments) if segment.startswith("MSH")]
    if len(headers) > 1:
        where = ", ".join(str(n) for n in headers)
        return [
            Issue(
                expression=f"segments {where} (MSH)",
                diagnostics=f"the file holds {len(headers)} HL7 v2 messages; send each message on its own",
            )
        ]
    code = message_type[0] if message_type else ""
    trigger = message_type[1] if len(message_type) > 1 else ""
    if not trigger or code.startswith("Z") or trigger.startswith("Z"):
        return []
    structure = message_type[2] if len(message_type) > 2 and message_type[2] else f"{code}_{trigger}"
    automaton = _automaton_for(structure, version) or _automaton_for(
        _EVENT_STRUCTURES.get(f"{code}^{trigger}"), version
    )
    if automaton is None:
        return []  # a version newer than the tables, or a type and event they do not list
    standard = [(i + 1, s[:3]) for i, s in enumerate(segments) if not s.startswith("Z")]
    return automaton.run(standard, f"{structure} (HL7 v{version})")


def _automaton_for(structure: str | None, version: str) -> _Automaton | None:
    """The automaton of `structure` in `version`, or None when hl7apy's tables have neither."""
    if not structure:
        return None
    try:
        return _automaton(structure, version)
    except (UnsupportedVersion, HL7apyException, KeyError, AttributeError, TypeError):
        return None


@dataclass(slots=True)
class _Automaton:
    """An epsilon-NFA over segment IDs; each token edge carries the structure path of its segment."""

    structure: str
    empty: list[list[int]] = field(default_factory=list)
    edges: list[list[tuple[str, int, str]]] = field(default_factory=list)
    start: int = 0
    accept: int = 0
    _closures: dict[frozenset[int], frozenset[int]] = field(default_factory=dict)
    _bridges: dict[tuple[frozenset[int], str | None], list[tuple[str, str]] | None] = field(
        default_factory=dict
    )
    _steps: dict[tuple[frozenset[int], str], frozenset[int]] = field(default_factory=dict)

    def state(self) -> int:
        self.empty.append([])
        self.edges.append([])
        return len(self.empty) - 1

    def closure(self, states: frozenset[int]) -> frozenset[int]:
        known = self._closures.get(states)
        if known is not None:
            return known
        seen, todo = set(states), list(states)
        while todo:
            for nxt in self.empty[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        done = frozenset(seen)
        self._closures[states] = done
        return done

    def step(self, states: frozenset[int], token: str) -> frozenset[int]:
        key = (states, token)
        known = self._steps.get(key)
        if known is None:
            if len(self._steps) > CACHE_ENTRIES:
                self._steps.clear()
                self._closures.clear()
            moved = frozenset(n for s in states for t, n, _ in self.edges[s] if t == token)
            known = self.closure(moved) if moved else moved
            self._steps[key] = known
        return known

    def bridge(self, states: frozenset[int], token: str | None) -> list[tuple[str, str]] | None:
        """The fewest required segments (ID, path) to insert so that `token` can follow (None: so that the
        message can end), at most MAX_INSERTED; None if there is no such path. A 0-1 breadth-first search:
        empty moves cost nothing, each inserted segment one."""
        key = (states, token)
        if len(self._bridges) > CACHE_ENTRIES:
            self._bridges.clear()
        if key not in self._bridges:
            self._bridges[key] = self._bridge(states, token)
        return self._bridges[key]

    def _bridge(self, states: frozenset[int], token: str | None) -> list[tuple[str, str]] | None:
        dist: dict[int, int] = dict.fromkeys(states, 0)
        back: dict[int, tuple[int, str | None, str]] = {}
        queue: deque[int] = deque(states)
        while queue:
            s = queue.popleft()
            d = dist[s]
            if (s == self.accept) if token is None else any(t == token for t, _, _ in self.edges[s]):
                path = []
                while s in back:
                    s, seg, where = back[s]
                    if seg is not None:
                        path.append((seg, where))
                return path[::-1]
            for n in self.empty[s]:
                if dist.get(n, MAX_INSERTED + 1) > d:
                    dist[n] = d
                    back[n] = (s, None, "")
                    queue.appendleft(n)
            if d < MAX_INSERTED:
                for t, n, where in self.edges[s]:
                    if dist.get(n, MAX_INSERTED + 1) > d + 1:
                        dist[n] = d + 1
                        back[n] = (s, t, where)
                        queue.append(n)
        return None

    def run(self, tokens: list[tuple[int, str]], title: str) -> list[Issue]:
        issues: list[Issue] = []
        states = self.closure(frozenset([self.start]))
        for number, token in tokens:
            if len(issues) >= MAX_ISSUES:
                issues.append(
                    Issue(expression=f"segment {number}", diagnostics="not checked further: too many issues")
                )
                return issues
            moved = self.step(states, token)
            if moved:
                states = moved
                continue
            inserted = self.bridge(states, token)
            if inserted is None:
                issues.append(
                    Issue(
                        expression=f"segment {number} ({token})",
                        diagnostics=f"{title} has no place for a {token} segment here",
                    )
                )
                continue
            for seg, where in inserted:
                issues.append(
                    Issue(
                        expression=where,
                        diagnostics=f"required segment {seg} missing before segment {number} ({token})",
                        code=IssueCode.REQUIRED,
                    )
                )
            states = self._after(states, inserted, token)
        if self.accept not in states:
            missing = self.bridge(states, None) or []
            for seg, where in missing:
                issues.append(
                    Issue(
                        expression=where,
                        diagnostics=f"required segment {seg} missing at the end of the message",
                        code=IssueCode.REQUIRED,
                    )
                )
            if not missing:
                issues.append(Issue(expression=self.structure, diagnostics=f"{title} is incomplete"))
        return issues

    def _after(self, states: frozenset[int], inserted: list[tuple[str, str]], token: str) -> frozenset[int]:
        for seg, _ in inserted:
            states = self.step(states, seg) or states
        return self.step(states, token) or states


@functools.lru_cache(maxsize=256)
def _automaton(structure: str, version: str) -> _Automaton:
    """The automaton of a message structure (built once per structure and version)."""
    automaton = _Automaton(structure)
    reference = load_reference(structure, "Message", version)
    automaton.start, automaton.accept = _fragment(automaton, reference, structure)
    return automaton


def _fragment(a: _Automaton, reference: Any, path: str) -> tuple[int, int]:
    """(entry, exit) states of a group's reference: a sequence or a choice of its children."""
    kind, children = reference[0], [c for c in reference[1] if c[3] in ("SEG", "GRP")]
    start = a.state()
    end = start
    if kind == "choice":
        end = a.state()
        for child in children:
            s, e = _child(a, child, path)
            a.empty[start].append(s)
            a.empty[e].append(end)
        return start, end
    for child in children:
        s, e = _repeated(a, child, path)
        a.empty[end].append(s)
        end = e
    return start, end


def _child(a: _Automaton, child: Any, path: str) -> tuple[int, int]:
    name, reference, _, kind = child[0], child[1], child[2], child[3]
    label = name.removeprefix(f"{a.structure}_")
    where = f"{path}.{label}"
    if kind == "SEG":
        s, e = a.state(), a.state()
        a.edges[s].append((name, e, where))
        return s, e
    return _fragment(a, reference, where)


def _repeated(a: _Automaton, child: Any, path: str) -> tuple[int, int]:
    least, most = child[2]
    start = a.state()
    end = start
    for _ in range(least):
        s, e = _child(a, child, path)
        a.empty[end].append(s)
        end = e
    if most == -1 or most - least > _FINITE_REPEAT:
        s, e = _child(a, child, path)
        a.empty[end].append(s)
        a.empty[e].append(s)  # again
        exit_ = a.state()
        a.empty[end].append(exit_)
        a.empty[e].append(exit_)
        return start, exit_
    for _ in range(most - least):
        s, e = _child(a, child, path)
        exit_ = a.state()
        a.empty[end].append(s)
        a.empty[end].append(exit_)
        a.empty[e].append(exit_)
        end = exit_
    return start, end
