"""Cascade information reconciliation (Brassard and Salvail, EUROCRYPT '93), batched and sans-IO.

Bob drives: ``next_request()`` gives the ParityRequest to send, ``receive()`` takes Alice's ParityReply.
Alice only answers (``answer()``). Neither object does IO; ``reconcile()`` runs a pair in memory through
the wire codec.

How this Cascade is laid out to need few round trips and little Python per bit:

- Alice's key never changes, so her parity of every top-level block of every pass is asked in the first
  request (these bits count in the leak exactly as standard Cascade counts them when each pass opens).
- Passes run in order. Every binary search of the open passes advances in lock step: one round trip
  per tree level carries the queries of all of them. A search at [s, e) splits at
  m = s + (e - s + 1) // 2 and asks for the left half; the right half is inferred.
- Every Alice parity Bob learns or infers is cached in a flat int8 array indexed by node: pass p, block
  b, heap id h (root 1, children 2h and 2h + 1) is ``node_offset[p] + b * width[p] + h``. A step whose
  answer is cached advances without a query, so a block searched again reuses its known sub-blocks.
- Bob's key changes, so his parity of [s, e) in pass p is the prefix XOR of his ORIGINAL permuted key
  plus the parity of the number of flips inside the range, counted by binary search in one sorted array
  of flat positions ``p * (n + 1) + position`` over all passes at once.
- After flips, each open pass checks the top-level blocks that hold a flipped bit; the ones that now
  disagree with Alice start new searches; searches whose range no longer disagrees are dropped.

Round trips. In lock step, a pass takes as many round trips as its longest chain of searches: a search
in pass 1 finds x, the pass-0 block of x turns odd and its search finds y, the pass-1 block of y turns
odd, and so on. Chains grow with the number of errors per second-pass block, so the option (8)
schedule (second block 2^ceil((alpha + 12) / 2), about ten errors per block at 2 %) needs 500-550
round trips on 1e5 bits (up to 1,600), while ``low_latency_schedule`` needs about 90-115 for 1.5 % more
leak. Each round trip costs Bob, Alice and the codec together about 0.3 ms of numpy call overhead.

The schedules are in :mod:`qlinkmed.qcore.cascade_schedule`; the block geometry and the per-pass
permutations both ends derive from the seed are in :mod:`qlinkmed.qcore.cascade_blocks`; the in-memory
run of a pair in :mod:`qlinkmed.qcore.cascade_pair`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .cascade_blocks import (
    BlockLayout,
    PrefixParities,
    as_key,
    check_seed,
    half_members,
    half_parity,
    half_split,
    pass_generator,
    pass_permutation,
)
from .cascade_schedule import CascadeSchedule
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import ParityReply, ParityRequest

_EMPTY = np.zeros(0, dtype=np.int64)
_CHUNK = 1 << 22  # positions per step when a pass's inverse order is written


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by a sort: numpy 2's hash-based unique took 4 to 10 s on the 4.5e6 ranges a
    1e10-pulse round asks, the sort 0.3 s."""
    values.sort()
    if values.size < 2:
        return values
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class CascadeAlice:
    """Holds the reference key and answers parity queries; her key never changes.

    Each pass keeps the prefix XOR of its permuted key, so the parity of [s, e) is P[e] ^ P[s]."""

    def __init__(self, key: np.ndarray, schedule: CascadeSchedule, seed: int) -> None:
        self._key = as_key(key, "key")
        self._seed = check_seed(seed)
        self._layout = layout = BlockLayout(self._key.size, schedule)
        self._prefix = PrefixParities(layout.passes, layout.stride)
        self._ready = np.zeros(layout.passes, dtype=bool)
        self._first_unready = 0
        self._top = np.zeros((layout.passes, 2), dtype=np.uint8)
        # End of a lazy pass's first top-level block, and of its second ([half, n), or none: -1).
        two = layout.blocks == 2
        self._top_end = np.where(two, layout.half, layout.n)
        self._top_end2 = np.where(two, layout.n, -1)
        packed = np.packbits(self._key)
        total = int(np.count_nonzero(self._key)) & 1
        for p in range(layout.passes):
            if not layout.lazy[p]:
                self._build(p)
            elif layout.blocks[p] == 1:
                self._top[p, 0] = total
            else:
                first = half_parity(half_split(pass_generator(self._seed, p), layout.n), self._key, packed)
                self._top[p] = (first, first ^ total)
        # Distinct ranges asked, as keys (p * stride + s) * stride + e, merged lazily into a sorted array;
        # a Python set of tuples when those keys could overflow int64.
        self._wide = layout.passes * layout.stride * layout.stride >= 1 << 63
        self._seen = _EMPTY
        self._seen_wide: set[tuple[int, int, int]] = set()
        self._unmerged: list[np.ndarray] = []

    def _build(self, p: int) -> None:
        layout = self._layout
        self._prefix.build(p, self._key, pass_permutation(layout.n, self._seed, p) if p else None)
        self._ready[p] = True
        unready = np.flatnonzero(~self._ready)
        self._first_unready = int(unready[0]) if unready.size else layout.passes

    @property
    def leaked_bits(self) -> int:
        """Distinct parities disclosed so far (a range asked twice counts once)."""
        if self._unmerged:
            fresh = _sorted_unique(np.concatenate(self._unmerged))
            self._unmerged.clear()
            seen = self._seen
            if seen.size:
                at = np.minimum(seen.searchsorted(fresh), seen.size - 1)
                seen = np.concatenate((seen, fresh[seen[at] != fresh]))
                seen.sort(kind="stable")  # two sorted runs: a merge
            self._seen = seen if seen.size else fresh
        return self._seen.size + len(self._seen_wide)

    def answer(self, request: ParityRequest) -> ParityReply:
        """Alice's parity of every range asked. A malformed request raises RemoteProtocolError."""
        layout = self._layout
        arrays = (request.passes, request.starts, request.ends)
        if not all(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu" for a in arrays):
            raise RemoteProtocolError("parity request: passes, starts and ends must be integer vectors")
        if not arrays[0].size == arrays[1].size == arrays[2].size:
            raise RemoteProtocolError("parity request: passes, starts and ends differ in length")
        if arrays[0].size == 0:
            return ParityReply(parities=np.zeros(0, dtype=np.uint8))
        p, s, e = (a.astype(np.int64) for a in arrays)
        top_pass = int(p.max())
        if top_pass >= layout.passes or (arrays[0].dtype.kind == "i" and p.min() < 0):
            raise RemoteProtocolError(f"parity request: pass index outside [0, {layout.passes})")
        if e.max() > layout.n or (e - s).min() <= 0 or (arrays[1].dtype.kind == "i" and s.min() < 0):
            raise RemoteProtocolError(f"parity request: a range is outside 0 <= start < end <= {layout.n}")
        waiting = None
        if top_pass >= self._first_unready:  # some range may lie in a pass not built yet
            waiting = ~self._ready[p]
            top = (s == 0) & (e == self._top_end[p]) | (s == layout.half) & (e == self._top_end2[p])
            for q in np.unique(p[waiting & ~top]).tolist():  # not a top-level block: build the pass
                self._build(q)
            waiting = ~self._ready[p]
        start = p * layout.stride + s
        parities = self._prefix.parity(start - s + e) ^ self._prefix.parity(start)
        if waiting is not None and waiting.any():
            parities[waiting] = self._top[p[waiting], (s[waiting] != 0).astype(np.int64)]
        if self._wide:
            self._seen_wide.update(zip(p.tolist(), s.tolist(), e.tolist(), strict=True))
        else:
            self._unmerged.append(start * layout.stride + e)
        return ParityReply(parities=parities)


class CascadeBob:
    """Drives the protocol: decides which parities to ask and corrects his key.

    ``key`` is Bob's current key (uint8 0/1); it is corrected in place as replies arrive."""

    def __init__(self, key: np.ndarray, schedule: CascadeSchedule, seed: int) -> None:
        # The original is only read, so it may be the caller's array; the working key is Bob's own.
        self._orig = as_key(key, "key")
        self.key = self._orig.copy()
        self._seed = check_seed(seed)
        self._layout = layout = BlockLayout(self.key.size, schedule)
        n, passes, stride = layout.n, layout.passes, layout.stride
        # Alice's parities, known or inferred: -1 unknown. A built pass owns blocks * width nodes from
        # _node_offset[p]; an unbuilt lazy pass owns only its roots, from _root_slot[p].
        self._node_offset = np.full(passes, -1, dtype=np.int64)
        self._root_slot = np.full(passes, -1, dtype=np.int64)
        size = 0
        for p in range(passes):
            if layout.lazy[p]:
                self._root_slot[p] = size
                size += int(layout.blocks[p])
            else:
                self._node_offset[p] = size
                size += int(layout.blocks[p] * layout.width[p])
        self._slack = int(layout.width.max())  # leaves' would-be children index up to here past the end
        # Allocated with the passes at the first reply (_materialise): no table exists while the first
        # request is only being sent, so a session's sifting temporaries are gone before these come.
        self._known = np.zeros(0, dtype=np.int8)
        self._known_size = size + self._slack
        # Flat per-pass arrays: row p at [p * stride, (p + 1) * stride); rows of unbuilt passes unused, and
        # never touched, so they cost address space, not memory. Pass 0 is the identity: its rows of
        # _perm and _where are never written either (_key_index and _flip know it), which saves 8 bytes
        # a key bit.
        flat = np.int32 if passes * stride < 1 << 31 else np.int64
        self._prefix = PrefixParities(passes, stride)  # of the original key
        self._perm = np.empty(passes * stride, dtype=flat)  # flat position -> key index (pass >= 1)
        self._where = np.empty((passes, n), dtype=flat)  # [p, key index] -> flat position (pass >= 1)
        self._built = np.zeros(passes, dtype=bool)
        self._flips = _EMPTY  # sorted flat positions of every flip, in every built pass
        self._flip_log: list[np.ndarray] = []
        self._splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._top = np.zeros((passes, 2), dtype=np.uint8)  # Bob's top-level parities of lazy passes
        self._lazy_open: list[int] = []  # opened passes still unbuilt
        self._packed: np.ndarray = _EMPTY  # np.packbits(key) when corrected_bits was _packed_at
        self._packed_at = -1
        self._open = -1
        # Active searches: heap id in the block's tree, node id, flat start, flat end.
        self._heap = self._node = self._lo = self._hi = _EMPTY
        self._nested = False  # may two searches share a block (and so meet in one node)?
        self._leaked = 0
        self._round_trips = 0
        self._corrected = 0
        self._awaiting = False
        self._done = False
        self._failed = False
        self._materialised = False
        self._refresh()
        roots = [self._roots(p) for p in range(passes)]
        self._pending_nodes = np.concatenate([r[0] for r in roots])
        self._pending = ParityRequest(
            passes=np.repeat(np.arange(passes, dtype=np.uint8), layout.blocks),
            starts=np.concatenate([r[1] for r in roots]).astype(np.uint32),
            ends=np.concatenate([r[2] for r in roots]).astype(np.uint32),
        )

    # -- public surface -------------------------------------------------------------------------------

    @property
    def leaked_bits(self) -> int:
        """Distinct parities asked of Alice so far."""
        return self._leaked

    @property
    def round_trips(self) -> int:
        """Request/reply exchanges completed."""
        return self._round_trips

    @property
    def corrected_bits(self) -> int:
        """Bits flipped so far."""
        return self._corrected

    @property
    def finished(self) -> bool:
        """True once every pass has run: next_request() returns None."""
        return self._done

    def next_request(self) -> ParityRequest | None:
        """The next batch of parity queries, or None when reconciliation is finished."""
        if self._failed:
            raise LocalProtocolError("the reconciliation failed earlier")
        if self._awaiting:
            raise LocalProtocolError("next_request() called again before receive()")
        if self._done:
            return None
        self._awaiting = True
        self._leaked += self._pending_nodes.size
        return self._pending

    def receive(self, reply: ParityReply) -> None:
        """Take Alice's answer to the last request and advance every search as far as it goes."""
        if self._failed:
            raise LocalProtocolError("the reconciliation failed earlier")
        if not self._awaiting:
            raise LocalProtocolError("receive() called with no request outstanding")
        parities = reply.parities if isinstance(reply, ParityReply) else None
        expected = self._pending_nodes.size
        if not isinstance(parities, np.ndarray) or parities.ndim != 1 or parities.size != expected:
            self._failed = True
            got = parities.size if isinstance(parities, np.ndarray) else type(reply).__name__
            raise RemoteProtocolError(f"parity reply: expected {expected} parities, got {got}")
        if parities.dtype.kind not in "biu" or (parities.size and parities.max() > 1):
            self._failed = True
            raise RemoteProtocolError("parity reply: parities must be 0 or 1")
        self._awaiting = False
        self._round_trips += 1
        if not self._materialised:
            self._materialise()
        self._known[self._pending_nodes] = parities
        try:
            self._advance()
        except RemoteProtocolError:
            self._failed = True
            raise

    # -- passes -----------------------------------------------------------------------------------------

    def _materialise(self) -> None:
        """The parity tree and every non-lazy pass, built when the first reply needs them. The first
        request asks only top-level blocks, which the layout alone names."""
        layout = self._layout
        self._known = np.full(self._known_size, -1, dtype=np.int8)
        for p in range(layout.passes):
            if not layout.lazy[p]:
                self._build(p)
        self._refresh()
        self._materialised = True

    def _roots(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Node ids, starts and ends (within the pass) of pass p's top-level blocks."""
        layout = self._layout
        b = np.arange(layout.blocks[p], dtype=np.int64)
        starts = b * layout.block[p]
        ends = np.minimum(starts + layout.block[p], layout.n)
        if self._node_offset[p] >= 0:
            return self._node_offset[p] + b * layout.width[p] + 1, starts, ends
        return self._root_slot[p] + b, starts, ends

    def _build(self, p: int) -> None:
        """Materialise pass p: its order, Bob's original prefix XOR, and the flips made so far."""
        layout = self._layout
        n, base = layout.n, p * layout.stride
        if p:
            perm = pass_permutation(n, self._seed, p, out=self._perm[base : base + n])
            self._prefix.build(p, self._orig, perm)
            where = self._where[p]
            for start in range(0, n, _CHUNK):
                end = min(start + _CHUNK, n)
                where[perm[start:end]] = np.arange(base + start, base + end, dtype=where.dtype)
        else:
            self._prefix.build(p, self._orig, None)
        self._built[p] = True
        if self._node_offset[p] < 0:  # a lazy pass: give it a whole tree, keeping its root parities
            nodes, _, _ = self._roots(p)
            self._node_offset[p] = self._known.size - self._slack
            grown = np.full(int(layout.blocks[p] * layout.width[p]), -1, dtype=np.int8)
            self._known = np.concatenate((self._known, grown))
            self._known[self._roots(p)[0]] = self._known[nodes]
        if self._flip_log:
            self._record_flips(self._where[p, np.concatenate(self._flip_log)])

    def _refresh(self) -> None:
        """Per-pass constants of the built passes, as columns, for _flip."""
        layout = self._layout
        built = np.flatnonzero(self._built)
        opened = built[built <= self._open][:, None]
        self._built_rows = built[:, None]
        self._opened_rows = opened.size
        self._col_base = opened * layout.stride
        self._col_size = layout.block[opened]
        self._col_end = self._col_base + layout.n
        self._col_node = self._node_offset[opened] + 1
        self._col_width = layout.width[opened]

    def _record_flips(self, positions: np.ndarray) -> None:
        merged = np.concatenate((self._flips, positions.astype(np.int64)))
        merged.sort(kind="stable")  # a sorted run and a short tail: a merge, not a full sort
        self._flips = merged

    def _open_pass(self, p: int) -> None:
        layout = self._layout
        self._open = p
        nodes, starts, ends = self._roots(p)
        base = p * layout.stride
        if self._built[p]:
            mine = self._parity(base + starts, base + ends)
        else:
            total = int(np.count_nonzero(self.key)) & 1
            if layout.blocks[p] == 1:
                self._top[p, 0] = total
            else:
                split = self._splits[p] = half_split(pass_generator(self._seed, p), layout.n)
                if self._packed_at != self._corrected:  # late passes open back to back: pack once
                    self._packed, self._packed_at = np.packbits(self.key), self._corrected
                first = half_parity(split, self.key, self._packed)
                self._top[p] = (first, first ^ total)
            mine = self._top[p, : nodes.size]
            self._lazy_open.append(p)
        bad = np.flatnonzero(mine != self._known[nodes])
        if bad.size:
            if not self._built[p]:
                self._lazy_open.remove(p)
                self._build(p)
                nodes = self._roots(p)[0]
            self._add(nodes[bad], base + starts[bad], base + ends[bad])
        if self._built[p]:  # an open, unbuilt pass is tracked by _lazy_open instead
            self._refresh()

    def _add(self, nodes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Start searches at the given roots (Alice's parity of each is known)."""
        if self._node.size:
            self._nested = True
        self._heap = np.concatenate((self._heap, np.ones(nodes.size, dtype=np.int64)))
        self._node = np.concatenate((self._node, nodes))
        self._lo = np.concatenate((self._lo, lo))
        self._hi = np.concatenate((self._hi, hi))

    def _advance(self) -> None:
        """Run the searches until they need Alice; open passes while none is active."""
        layout = self._layout
        while True:
            self._run_searches()
            if self._node.size:
                if self._nested:  # two searches may have walked into the same node: keep one
                    _, first = np.unique(self._node, return_index=True)
                    if first.size < self._node.size:
                        self._keep(first)
                lo = self._lo
                p = lo // layout.stride
                start = lo - p * layout.stride
                self._pending_nodes = self._node + self._heap
                self._pending = ParityRequest(
                    passes=p.astype(np.uint8),
                    starts=start.astype(np.uint32),
                    ends=(start + (self._hi - lo + 1) // 2).astype(np.uint32),
                )
                return
            self._nested = False
            if self._open + 1 >= layout.passes:
                self._done = True
                return
            self._open_pass(self._open + 1)

    # -- searches ---------------------------------------------------------------------------------------

    def _keep(self, which: np.ndarray) -> None:
        self._heap, self._node = self._heap[which], self._node[which]
        self._lo, self._hi = self._lo[which], self._hi[which]

    def _parity(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Bob's current parity of the flat ranges [lo, hi) (built passes only)."""
        prefix = self._prefix
        par: NDArray[np.uint8] = prefix.parity(hi) ^ prefix.parity(lo)
        flips = self._flips
        if flips.size:
            flipped: NDArray[np.intp] = (flips.searchsorted(hi) - flips.searchsorted(lo)) & 1
            return par ^ flipped
        return par

    def _run_searches(self) -> None:
        """Advance every search as far as known parities allow, flipping the errors found.

        One iteration moves every search whose next answer is known down one level (on the parities
        before this iteration's flips), then flips the errors found at leaves and re-checks every
        search against the flips, so a search always sits on a node where Bob and Alice disagree."""
        while self._node.size:
            known = self._known  # a flip may build a pass, which grows the array
            heap, node, lo, hi = self._heap, self._node, self._lo, self._hi
            span = hi - lo
            leaf = span == 1 if span.min() == 1 else None
            left = node + heap  # for a leaf this points past its tree: known has slack, and it is masked
            alice_left = known[left]
            ready = alice_left >= 0
            if leaf is not None:
                ready &= ~leaf
            moving = np.count_nonzero(ready)
            if moving == ready.size:
                known[left + 1] = known[node] ^ alice_left  # the right half, inferred
                mid = lo + (span + 1) // 2
                right = self._parity(lo, mid) == alice_left  # the left half agrees: the error is right
                self._heap = 2 * heap + right
                self._node = left + right
                self._lo = np.where(right, mid, lo)
                self._hi = np.where(right, hi, mid)
            elif moving:
                known[left[ready] + 1] = known[node[ready]] ^ alice_left[ready]
                mid = lo + (span + 1) // 2
                right = self._parity(lo, mid) == alice_left
                go_right = ready & right
                self._heap = np.where(ready, 2 * heap + right, heap)
                self._node = np.where(ready, left + right, node)
                self._lo = np.where(go_right, mid, lo)
                self._hi = np.where(ready ^ go_right, mid, hi)
            if leaf is not None:
                errors = self._key_index(lo[leaf])
                self._keep(~leaf)
                self._flip(errors)
            elif not moving:
                break

    def _key_index(self, flat: np.ndarray) -> np.ndarray:
        """The key index at each flat position (pass 0 is the identity and has no _perm row)."""
        stride = self._layout.stride
        index = np.array(flat, dtype=np.int64)
        later = index >= stride
        index[later] = self._perm[index[later]]
        return index

    def _flip(self, errors: np.ndarray) -> None:
        """Flip the errors found, drop searches they balanced, start those they unbalanced."""
        if self._nested:
            errors = np.unique(errors)
        # A bit already flipped differs from the original (each bit flips at most once).
        if np.count_nonzero(self.key[errors] != self._orig[errors]):
            raise RemoteProtocolError("parity replies are inconsistent: a bit would be flipped twice")
        self.key[errors] ^= 1
        self._flip_log.append(errors)
        self._corrected += errors.size
        where = self._where[self._built_rows, errors]  # flat positions, one row per built pass
        where[0] = errors  # pass 0, always built, is the identity (its row of _where is never written)
        self._record_flips(where.ravel())
        if self._opened_rows:
            block = (where[: self._opened_rows] - self._col_base) // self._col_size
            lo = self._col_base + block * self._col_size
            hi = np.minimum(lo + self._col_size, self._col_end)
            nodes = self._col_node + block * self._col_width
            self._add(nodes.ravel(), lo.ravel(), hi.ravel())
            if errors.size > 1:
                self._nested = True
        for p in tuple(self._lazy_open):
            self._toggle_lazy(p, errors)
        keep = self._parity(self._lo, self._hi) != self._known[self._node]
        if np.count_nonzero(keep) < keep.size:
            self._keep(keep)

    def _toggle_lazy(self, p: int, errors: np.ndarray) -> None:
        """Update an open, unbuilt pass's top-level parities; build it if a block turned odd."""
        layout = self._layout
        nodes, starts, ends = self._roots(p)
        if layout.blocks[p] == 1:
            self._top[p, 0] ^= errors.size & 1
        else:
            inside = int(np.count_nonzero(half_members(self._splits[p], errors)))
            self._top[p, 0] ^= inside & 1
            self._top[p, 1] ^= (errors.size - inside) & 1
        bad = np.flatnonzero(self._top[p, : nodes.size] != self._known[nodes])
        if bad.size:
            self._lazy_open.remove(p)
            self._build(p)
            self._refresh()
            base = p * layout.stride
            self._add(self._roots(p)[0][bad], base + starts[bad], base + ends[bad])
