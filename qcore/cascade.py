"""Cascade information reconciliation (Brassard and Salvail, EUROCRYPT '93), batched and sans-IO.

Bob drives: ``next_request()`` gives the ParityRequest to send, ``receive()`` takes Alice's ParityReply.
Alice only answers (``answer()``). Neither object does IO; ``reconcile()`` runs a pair in memory through
the wire codec.

How this Cascade is laid out to need few round trips and little Python per bit:

- Alice's key never changes, so her parity of every top-level block of every pass is asked in the first
  request (they count in the leak exactly as standard Cascade counts them when each pass opens).
- Passes run in order. Every binary search of the open passes advances in lock step: one round trip
  per tree level carries the queries of all of them. A search at [s, e) splits at
  m = s + (e - s + 1) // 2 and asks for the left half; the right half is inferred.
- Every Alice parity Bob learns or infers is cached in a flat int8 array indexed by node: pass p, block
  b, heap id h (root 1, children 2h and 2h + 1) is ``node_offset[p] + b * width[p] + h``. A step whose
  answer is cached advances without a query.
- Bob's key changes, so his parity of [s, e) in pass p is the prefix XOR of his ORIGINAL permuted key
  plus the count of flips inside the range, found by binary search in one sorted array of keys
  ``p * (n + 1) + position`` for all passes at once.
- After flips, each open pass checks the top-level blocks that hold a flipped bit; the ones that now
  disagree with Alice start new searches, which descend through the cache at no cost.

Permutations. Pass 0 is the identity. Pass p >= 1 draws from
``Generator(PCG64(seed).jumped(p))``: first a uniformly random set of ceil(n/2) positions that form the
first half of the pass's order, then a uniformly random order of each half. The result is a uniformly
random permutation, but a pass whose blocks are exactly the two halves (every pass after the third in
option (8)) needs only the set for its top-level parities, which costs 0.2 ms instead of 1.2 ms for a
full permutation of 1e5 positions. Its order is built only if a search enters the pass, which is rare.
Each pass has its own stream, so building one pass never shifts another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import codec
from .errors import ConfigError, LocalProtocolError, RemoteProtocolError
from .messages import ParityReply, ParityRequest

OPTION8_PASSES = 14
"""Number of passes in the Martinez-Mateo option (8) schedule."""

OPTION8_THIRD_BLOCK = 4096
"""Top-level block size of the third pass in option (8)."""

QBER_FLOOR = 1e-4
"""QBER assumed when sizing blocks for an estimate of zero (or below this)."""

_MAX_PASSES = 256  # the pass index travels as a u8
_MAX_KEY_BITS = (1 << 32) - 1  # range ends travel as u32
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class CascadeSchedule:
    """The top-level block size of each pass; the last block of a pass may be shorter.

    A block size larger than the key is read as the whole key."""

    block_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.block_sizes) <= _MAX_PASSES:
            raise ConfigError("block_sizes", f"need 1 to {_MAX_PASSES} passes, got {len(self.block_sizes)}")
        for size in self.block_sizes:
            if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
                raise ConfigError("block_sizes", f"block sizes must be positive integers, got {size!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CascadeResult:
    """What an in-memory reconciliation produced."""

    bob_key: np.ndarray
    """Bob's corrected key (uint8 0/1)."""
    leaked_bits: int
    """Distinct parities Alice disclosed."""
    round_trips: int
    """Request/reply exchanges."""
    corrected_bits: int
    """Bits Bob flipped."""
    messages: int
    """Messages sent, both directions."""
    bytes_exchanged: int
    """Encoded size of all messages, both directions."""


def option8_schedule(n: int, qber: float) -> CascadeSchedule:
    """Martinez-Mateo et al. (arXiv:1407.3257) option (8): 14 passes.

    alpha = log2(1/Q) - 1/2; k1 = 2^ceil(alpha), k2 = 2^ceil((alpha + 12) / 2), k3 = 4096, then
    ceil(n/2). Q is clamped to [QBER_FLOOR, 0.5]; sizes are clamped to [min(2, n), n].
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= _MAX_KEY_BITS:
        raise ConfigError("n", f"key length must be an integer in [1, {_MAX_KEY_BITS}], got {n!r}")
    if not math.isfinite(qber):
        raise ConfigError("qber", f"must be a finite number, got {qber!r}")
    q = min(max(float(qber), QBER_FLOOR), 0.5)
    alpha = math.log2(1.0 / q) - 0.5
    sizes = [2 ** math.ceil(alpha), 2 ** math.ceil((alpha + 12.0) / 2.0), OPTION8_THIRD_BLOCK]
    sizes += [-(-int(n) // 2)] * (OPTION8_PASSES - len(sizes))
    low = min(2, int(n))
    return CascadeSchedule(tuple(max(low, min(size, int(n))) for size in sizes))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
    return int(seed)


def _pass_generator(seed: int, pass_index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed).jumped(pass_index))


def _first_half(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random set of exactly ceil(n/2) of n positions, as a boolean mask.

    Fair coins give a set of about the right size; the excess is then moved by choosing uniformly
    among the members of the larger side. Every step treats positions symmetrically, so every set of
    that size is equally likely."""
    half = (n + 1) // 2
    mask = np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8), count=n).view(bool)
    excess = int(np.count_nonzero(mask)) - half
    if excess:
        side = np.flatnonzero(mask if excess > 0 else ~mask)
        mask[side[rng.choice(side.size, abs(excess), replace=False)]] = excess < 0
    return mask


def _pass_permutation(n: int, seed: int, pass_index: int) -> np.ndarray:
    if pass_index == 0:
        return np.arange(n, dtype=np.int64)
    rng = _pass_generator(seed, pass_index)
    mask = _first_half(rng, n)
    first, second = np.flatnonzero(mask), np.flatnonzero(~mask)
    perm = np.empty(n, dtype=np.int64)
    np.take(first, rng.permutation(first.size), out=perm[: first.size])
    np.take(second, rng.permutation(second.size), out=perm[first.size :])
    return perm


def permutations(n: int, seed: int, passes: int) -> list[np.ndarray]:
    """The order of each pass: ``perm[p][i]`` is the key index at position i of pass p.

    Pass 0 is the identity; see the module docstring for how the others derive from the public seed."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= _MAX_KEY_BITS:
        raise ConfigError("n", f"key length must be an integer in [1, {_MAX_KEY_BITS}], got {n!r}")
    seed = _check_seed(seed)
    return [_pass_permutation(int(n), seed, p) for p in range(passes)]


def _as_key(key: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(key)
    if arr.ndim != 1 or not 1 <= arr.size <= _MAX_KEY_BITS:
        raise ConfigError(name, f"must be a one-dimensional array of 1 to {_MAX_KEY_BITS} bits")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iu" or np.any((arr != 0) & (arr != 1)):
        raise ConfigError(name, "must hold only 0 and 1")
    return arr.astype(np.uint8)


class _Layout:
    """Block and node geometry of every pass, the same at both ends."""

    __slots__ = ("block", "blocks", "half", "lazy", "n", "node_offset", "nodes", "passes", "stride", "width")

    def __init__(self, n: int, schedule: CascadeSchedule) -> None:
        self.n = n
        self.stride = n + 1
        self.passes = len(schedule.block_sizes)
        self.half = (n + 1) // 2
        block = np.array([min(int(k), n) for k in schedule.block_sizes], dtype=np.int64)
        self.block = block
        self.blocks = -(-n // block)
        depth = np.array([(int(k) - 1).bit_length() for k in block], dtype=np.int64)
        self.width = np.left_shift(1, depth + 1).astype(np.int64)
        sizes = self.blocks * self.width
        self.node_offset = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        self.nodes = int(sizes.sum())
        # A pass whose blocks are the two halves of its order (or one block, the whole key) gets its
        # top-level parities from the half mask alone.
        self.lazy = np.array(
            [p > 0 and (b == 1 or (b == 2 and k == self.half)) for p, (b, k) in enumerate(zip(self.blocks, block))]
        )

    def roots(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Node ids, starts and ends of pass p's top-level blocks."""
        b = np.arange(self.blocks[p], dtype=np.int64)
        starts = b * self.block[p]
        ends = np.minimum(starts + self.block[p], self.n)
        return self.node_offset[p] + b * self.width[p] + 1, starts, ends


class CascadeAlice:
    """Holds the reference key and answers parity queries; her key never changes.

    Each pass keeps the prefix XOR of the permuted key, so the parity of [s, e) is P[e] ^ P[s]."""

    def __init__(self, key: np.ndarray, schedule: CascadeSchedule, seed: int) -> None:
        self._key = _as_key(key, "key")
        self._seed = _check_seed(seed)
        self._layout = layout = _Layout(self._key.size, schedule)
        self._prefix = np.empty(layout.passes * layout.stride, dtype=np.uint8)
        self._ready = np.zeros(layout.passes, dtype=bool)
        self._top = np.zeros((layout.passes, 2), dtype=np.uint8)
        total = int(np.count_nonzero(self._key)) & 1
        for p in range(layout.passes):
            if not layout.lazy[p]:
                self._build(p)
            elif layout.blocks[p] == 1:
                self._top[p, 0] = total
            else:
                mask = _first_half(_pass_generator(self._seed, p), layout.n)
                first = int(np.count_nonzero(self._key.view(bool) & mask)) & 1
                self._top[p] = (first, first ^ total)
        # Distinct ranges asked: keys p * stride^2 + s * stride + e, merged lazily into a sorted array.
        self._wide = layout.passes * layout.stride * layout.stride >= 1 << 63
        self._seen = _EMPTY
        self._seen_wide: set[tuple[int, int, int]] = set()
        self._unmerged: list[np.ndarray] = []

    def _build(self, p: int) -> None:
        layout = self._layout
        perm = _pass_permutation(layout.n, self._seed, p)
        row = self._prefix[p * layout.stride : (p + 1) * layout.stride]
        row[0] = 0
        np.bitwise_xor.accumulate(self._key[perm], out=row[1:])
        self._ready[p] = True

    @property
    def leaked_bits(self) -> int:
        """Distinct parities disclosed so far (a range asked twice counts once)."""
        if self._unmerged:
            fresh = np.unique(np.concatenate(self._unmerged))
            self._unmerged.clear()
            seen = self._seen
            if seen.size:
                at = np.minimum(seen.searchsorted(fresh), seen.size - 1)
                fresh = fresh[seen[at] != fresh]
                seen = np.concatenate((seen, fresh))
                seen.sort(kind="stable")  # two sorted runs: a merge
                self._seen = seen
            else:
                self._seen = fresh
        return self._seen.size + len(self._seen_wide)

    def answer(self, request: ParityRequest) -> ParityReply:
        """Alice's parity of every range asked. A malformed request raises RemoteProtocolError."""
        layout = self._layout
        passes, starts, ends = request.passes, request.starts, request.ends
        if not all(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu" for a in (passes, starts, ends)):
            raise RemoteProtocolError("parity request: passes, starts and ends must be integer vectors")
        if not passes.size == starts.size == ends.size:
            raise RemoteProtocolError("parity request: passes, starts and ends differ in length")
        if passes.size == 0:
            return ParityReply(parities=np.zeros(0, dtype=np.uint8))
        p = passes.astype(np.int64)
        s = starts.astype(np.int64)
        e = ends.astype(np.int64)
        if p.min() < 0 or p.max() >= layout.passes:
            raise RemoteProtocolError(f"parity request: pass index outside [0, {layout.passes})")
        if s.min() < 0 or e.max() > layout.n or (e - s).min() <= 0:
            raise RemoteProtocolError(f"parity request: a range is outside 0 <= start < end <= {layout.n}")
        waiting = ~self._ready[p]
        if waiting.any():
            for q in np.unique(p[waiting]).tolist():
                sel = p == q
                if layout.blocks[q] == 1:
                    top = (s[sel] == 0) & (e[sel] == layout.n)
                else:
                    top = ((s[sel] == 0) & (e[sel] == layout.half)) | ((s[sel] == layout.half) & (e[sel] == layout.n))
                if not top.all():
                    self._build(q)
            waiting = ~self._ready[p]
        base = p * layout.stride
        prefix = self._prefix
        parities = prefix[base + e] ^ prefix[base + s]
        if waiting.any():
            parities[waiting] = self._top[p[waiting], (s[waiting] != 0).astype(np.int64)]
        if self._wide:
            self._seen_wide.update(zip(p.tolist(), s.tolist(), e.tolist(), strict=True))
        else:
            self._unmerged.append((base + s) * layout.stride + e)
        return ParityReply(parities=parities)


class CascadeBob:
    """Drives the protocol: decides which parities to ask and corrects his key.

    ``key`` is Bob's current key (uint8 0/1); it is corrected in place as replies arrive."""

    def __init__(self, key: np.ndarray, schedule: CascadeSchedule, seed: int) -> None:
        self.key = _as_key(key, "key")
        self._orig = self.key.copy()
        self._seed = _check_seed(seed)
        self._layout = layout = _Layout(self.key.size, schedule)
        n, passes, stride = layout.n, layout.passes, layout.stride
        self._known = np.full(layout.nodes, -1, dtype=np.int8)
        # Flat per-pass arrays, row p at [p * stride, (p + 1) * stride); rows of unbuilt passes unused.
        self._prefix = np.empty(passes * stride, dtype=np.uint8)
        self._perm = np.empty(passes * stride, dtype=np.int64)
        self._where = np.empty((passes, n), dtype=np.int64)  # [p, i]: flat position of key bit i in pass p
        self._built = np.zeros(passes, dtype=bool)
        self._built_ids = _EMPTY
        self._flips = _EMPTY  # sorted flat positions of every flip, in every built pass
        self._flipped = np.zeros(n, dtype=bool)
        self._flip_log: list[np.ndarray] = []
        self._masks: dict[int, np.ndarray] = {}
        self._top = np.zeros((passes, 2), dtype=np.uint8)  # Bob's top-level parities of lazy passes
        self._lazy_open: list[int] = []  # opened passes still unbuilt
        self._open = -1
        # Active searches, one per column: heap id, node id, flat start, flat end.
        self._searches = np.zeros((4, 0), dtype=np.int64)
        self._leaked = 0
        self._round_trips = 0
        self._corrected = 0
        self._awaiting = False
        self._done = False
        self._failed = False
        for p in range(passes):
            if not layout.lazy[p]:
                self._build(p)
        roots = [layout.roots(p) for p in range(passes)]
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
        if not isinstance(parities, np.ndarray) or parities.ndim != 1 or parities.size != self._pending_nodes.size:
            self._failed = True
            got = parities.size if isinstance(parities, np.ndarray) else type(reply).__name__
            raise RemoteProtocolError(f"parity reply: expected {self._pending_nodes.size} parities, got {got}")
        if parities.dtype.kind not in "biu" or (parities.size and parities.max() > 1):
            self._failed = True
            raise RemoteProtocolError("parity reply: parities must be 0 or 1")
        self._awaiting = False
        self._round_trips += 1
        self._known[self._pending_nodes] = parities
        try:
            self._advance()
        except RemoteProtocolError:
            self._failed = True
            raise

    # -- passes -----------------------------------------------------------------------------------------

    def _build(self, p: int) -> None:
        """Materialise pass p: its order, Bob's original prefix XOR, and the flips made so far."""
        layout = self._layout
        n, base = layout.n, p * layout.stride
        perm = _pass_permutation(n, self._seed, p)
        self._perm[base : base + n] = perm
        row = self._prefix[base : base + layout.stride]
        row[0] = 0
        np.bitwise_xor.accumulate(self._orig[perm], out=row[1:])
        self._where[p, perm] = np.arange(base, base + n, dtype=np.int64)
        self._built[p] = True
        self._built_ids = np.flatnonzero(self._built)
        if self._flip_log:
            self._record_flips(self._where[p, np.concatenate(self._flip_log)])

    def _record_flips(self, positions: np.ndarray) -> None:
        merged = np.concatenate((self._flips, positions))
        merged.sort(kind="stable")  # a sorted run and a short tail: a merge, not a full sort
        self._flips = merged

    def _open_pass(self, p: int) -> None:
        layout = self._layout
        self._open = p
        nodes, starts, ends = layout.roots(p)
        base = p * layout.stride
        if self._built[p]:
            mine = self._parity(base + starts, base + ends)
        else:
            current = self.key.view(bool)
            total = int(np.count_nonzero(current)) & 1
            if layout.blocks[p] == 1:
                self._top[p, 0] = total
            else:
                mask = _first_half(_pass_generator(self._seed, p), layout.n)
                self._masks[p] = mask
                first = int(np.count_nonzero(current & mask)) & 1
                self._top[p] = (first, first ^ total)
            mine = self._top[p, : nodes.size]
            self._lazy_open.append(p)
        bad = np.flatnonzero(mine != self._known[nodes])
        if bad.size:
            if not self._built[p]:
                self._lazy_open.remove(p)
                self._build(p)
            fresh = np.vstack((np.ones(bad.size, dtype=np.int64), nodes[bad], base + starts[bad], base + ends[bad]))
            self._searches = np.concatenate((self._searches, fresh), axis=1)

    def _advance(self) -> None:
        """Run the searches until they need Alice; open passes while none is active."""
        layout = self._layout
        while True:
            self._run_searches()
            searches = self._searches
            if searches.shape[1]:
                # Two searches may have walked into the same node: keep one.
                _, first = np.unique(searches[1], return_index=True)
                if first.size < searches.shape[1]:
                    searches = self._searches = searches[:, first]
                heap, node, lo, hi = searches
                p = lo // layout.stride
                start = lo - p * layout.stride
                self._pending_nodes = node + heap
                self._pending = ParityRequest(
                    passes=p.astype(np.uint8),
                    starts=start.astype(np.uint32),
                    ends=(start + (hi - lo + 1) // 2).astype(np.uint32),
                )
                return
            if self._open + 1 >= layout.passes:
                self._done = True
                return
            self._open_pass(self._open + 1)

    # -- searches ---------------------------------------------------------------------------------------

    def _parity(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Bob's current parity of the flat ranges [lo, hi) (built passes only)."""
        prefix = self._prefix
        par = prefix[hi] ^ prefix[lo]
        flips = self._flips
        if flips.size:
            return par ^ ((flips.searchsorted(hi) - flips.searchsorted(lo)) & 1)
        return par

    def _run_searches(self) -> None:
        """Advance every search as far as known parities allow, flipping the errors found."""
        known = self._known
        searches = self._searches
        while searches.shape[1]:
            heap, node, lo, hi = searches
            span = hi - lo
            leaf = span == 1
            if leaf.any():
                searches = self._flip(self._perm[lo[leaf]], searches[:, ~leaf])
                continue
            left = node + heap
            alice_left = known[left]
            ready = alice_left >= 0
            if ready.all():
                moving = None
            else:
                moving = ready.nonzero()[0]
                if not moving.size:
                    break
                heap, node, lo, hi = searches[:, moving]
                left, alice_left, span = left[moving], alice_left[moving], span[moving]
            known[left + 1] = known[node] ^ alice_left  # the right half, inferred
            mid = lo + (span + 1) // 2
            right = self._parity(lo, mid) == alice_left  # the left half agrees: the error is right
            step = np.vstack((2 * heap + right, left + right, np.where(right, mid, lo), np.where(right, hi, mid)))
            if moving is None:
                searches = step
            else:
                searches[:, moving] = step
        self._searches = searches

    def _flip(self, errors: np.ndarray, searches: np.ndarray) -> np.ndarray:
        """Flip the errors found; return the searches still unbalanced plus those the flips open."""
        errors = np.unique(errors)
        if self._flipped[errors].any():
            raise RemoteProtocolError("parity replies are inconsistent: a bit would be flipped twice")
        layout = self._layout
        self._flipped[errors] = True
        self.key[errors] ^= 1
        self._flip_log.append(errors)
        self._corrected += errors.size
        built = self._built_ids
        where = self._where[built[:, None], errors]  # flat positions, one row per built pass
        self._record_flips(where.reshape(-1))
        fresh = []
        opened = built <= self._open
        if opened.any():
            p = built[opened][:, None]
            base = p * layout.stride
            size = layout.block[p]
            block = (where[opened] - base) // size
            starts = base + block * size
            ends = np.minimum(starts + size, base + layout.n)
            nodes = layout.node_offset[p] + block * layout.width[p] + 1
            fresh.append(
                np.vstack((np.ones(nodes.size, dtype=np.int64), nodes.reshape(-1), starts.reshape(-1), ends.reshape(-1)))
            )
        for p in list(self._lazy_open):
            nodes, starts, ends = layout.roots(p)
            if layout.blocks[p] == 1:
                self._top[p, 0] ^= errors.size & 1
            else:
                inside = int(np.count_nonzero(self._masks[p][errors]))
                self._top[p, 0] ^= inside & 1
                self._top[p, 1] ^= (errors.size - inside) & 1
            bad = np.flatnonzero(self._top[p, : nodes.size] != self._known[nodes])
            if bad.size:
                self._lazy_open.remove(p)
                self._build(p)
                base = p * layout.stride
                fresh.append(np.vstack((np.ones(bad.size, dtype=np.int64), nodes[bad], base + starts[bad], base + ends[bad])))
        if fresh:
            searches = np.concatenate((searches, *fresh), axis=1)
        _, node, lo, hi = searches
        return searches[:, self._parity(lo, hi) != self._known[node]]


def reconcile(alice_key: np.ndarray, bob_key: np.ndarray, schedule: CascadeSchedule, seed: int) -> CascadeResult:
    """Run Alice and Bob against each other in memory, every message through encode() and decode()."""
    alice = CascadeAlice(alice_key, schedule, seed)
    bob = CascadeBob(bob_key, schedule, seed)
    messages = 0
    size = 0
    while (request := bob.next_request()) is not None:
        wire = request.encode()
        decoded = codec.decode(wire)
        if not isinstance(decoded, ParityRequest):
            raise RemoteProtocolError(f"expected a ParityRequest, decoded {type(decoded).__name__}")
        answer = alice.answer(decoded).encode()
        reply = codec.decode(answer)
        if not isinstance(reply, ParityReply):
            raise RemoteProtocolError(f"expected a ParityReply, decoded {type(reply).__name__}")
        bob.receive(reply)
        messages += 2
        size += len(wire) + len(answer)
    return CascadeResult(
        bob_key=bob.key.copy(),
        leaked_bits=bob.leaked_bits,
        round_trips=bob.round_trips,
        corrected_bits=bob.corrected_bits,
        messages=messages,
        bytes_exchanged=size,
    )
