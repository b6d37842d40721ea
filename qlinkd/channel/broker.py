"""The quantum channel's bookkeeping, without I/O: it pairs the two parties' submissions for a round
and turns them into what each party's detectors record.

Each party makes its own random choices and hands them in: Alice her BB84 pulses (bits, bases, decoy
classes) or her E91 analyser settings, Bob his bases or settings. The channel draws only what belongs to
the fibre, the detectors and an eavesdropper, and answers each party with its own detection record
(Alice in BB84 only learns that her pulses left). Emulating entanglement needs both E91 settings in one
place; that is the one liberty the emulation takes, and no party ever sees the other's choices through
it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from qlinkmed.qcore.backends import MeasurementBackend
from qlinkmed.qcore.channel import (
    DetectorClicks,
    Eavesdropper,
    EveKind,
    PreparedPulses,
    emulate_bb84,
    emulate_e91,
)
from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.errors import ConfigError
from qlinkmed.qcore.params import DecoySource, SourceKind
from qlinkmed.qlinkd.link import messages as lm
from qlinkmed.qlinkd.link.events import MAX_ROUNDS_IN_FLIGHT

EMULATION_SLICE = 1 << 23
"""Pulses emulated at a time (about 8.4e6): bounds the channel service's memory for large rounds."""
ROUNDS_HELD_PER_LINK = MAX_ROUNDS_IN_FLIGHT
"""Unmatched submissions kept per link (a link has at most this many rounds open); older ones belong to
rounds their parties abandoned."""


@dataclass(frozen=True, slots=True)
class LinkKey:
    alice: str
    bob: str

    def __str__(self) -> str:
        return f"{self.alice}--{self.bob}"


@dataclass(slots=True)
class _Pending:
    protocol: str
    alice: lm.PulseTrain | lm.AnalyserSettings | None = None
    bob: lm.AnalyserSettings | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A round with both submissions in: ready to emulate (``run``), possibly in a worker thread."""

    link: LinkKey
    round_id: int
    protocol: str
    alice: lm.PulseTrain | lm.AnalyserSettings
    bob: lm.AnalyserSettings
    eve: Eavesdropper


@dataclass(frozen=True, slots=True)
class JobResult:
    link: LinkKey
    round_id: int
    alice: lm.PulsesSent | lm.DetectionRecord | lm.ChannelError
    bob: lm.DetectionRecord | lm.ChannelError


@dataclass(slots=True)
class ChannelBroker:
    model: ChannelModel
    backend: MeasurementBackend
    eve: Eavesdropper = field(default_factory=Eavesdropper)
    sources: dict[LinkKey, str] = field(default_factory=dict)
    """What each link's Alice sent in her last submission: "wcp" (weak coherent pulses, the decoy source,
    which now and then hold several photons), "single-photon" (BB84) or "entangled" (E91 pairs). Only a
    "wcp" link has photons for a photon-number-splitting attack to take."""
    _pending: dict[LinkKey, OrderedDict[int, _Pending]] = field(default_factory=dict)

    def submit(
        self, link: LinkKey, protocol: str, role: str, round_id: int, message: object
    ) -> Job | lm.ChannelError | None:
        """Record one party's submission; a Job once both are in, a ChannelError if it is refused."""
        rounds = self._pending.setdefault(link, OrderedDict())
        pending = rounds.get(round_id)
        if pending is None:
            pending = rounds[round_id] = _Pending(protocol=protocol)
            while len(rounds) > ROUNDS_HELD_PER_LINK:
                rounds.popitem(last=False)
        if pending.protocol != protocol:
            return lm.ChannelError(reason=f"round {round_id}: the parties run different protocols")
        if role == "alice":
            # BB84: her pulses; E91: her analyser settings. Anything else is refused here, not held.
            submission = message if isinstance(message, lm.PulseTrain | lm.AnalyserSettings) else None
            if submission is None or isinstance(submission, lm.PulseTrain) != (protocol == "bb84"):
                return lm.ChannelError(
                    reason=f"{type(message).__name__} is not Alice's {protocol} submission"
                )
            if pending.alice is not None:
                return lm.ChannelError(reason=f"round {round_id}: Alice already submitted")
            pending.alice = submission
            self.sources[link] = _source_of(submission)
        else:
            if not isinstance(message, lm.AnalyserSettings):
                return lm.ChannelError(reason=f"{type(message).__name__} is not Bob's submission")
            if pending.bob is not None:
                return lm.ChannelError(reason=f"round {round_id}: Bob already submitted")
            pending.bob = message
        if pending.alice is None or pending.bob is None:
            return None
        del rounds[round_id]
        return Job(
            link=link,
            round_id=round_id,
            protocol=protocol,
            alice=pending.alice,
            bob=pending.bob,
            eve=self.eve,
        )

    def forget(self, link: LinkKey) -> None:
        self._pending.pop(link, None)
        self.sources.pop(link, None)


def _source_of(submission: lm.PulseTrain | lm.AnalyserSettings) -> str:
    if not isinstance(submission, lm.PulseTrain):
        return "entangled"
    return SourceKind.WCP.value if submission.intensities is not None else SourceKind.SINGLE_PHOTON.value


def run(job: Job, *, model: ChannelModel, backend: MeasurementBackend, rng: np.random.Generator) -> JobResult:
    """Emulate one round. Pure computation: safe to call from a worker thread with its own rng. The
    emulator validates the parties' choices (sizes, ranges); a refusal answers both with a ChannelError."""
    try:
        if job.protocol == "bb84":
            return _run_bb84(job, model=model, backend=backend, rng=rng)
        return _run_e91(job, model=model, backend=backend, rng=rng)
    except ConfigError as exc:
        error = lm.ChannelError(reason=f"{exc.field}: {exc.message}")
        return JobResult(link=job.link, round_id=job.round_id, alice=error, bob=error)


def _run_bb84(
    job: Job, *, model: ChannelModel, backend: MeasurementBackend, rng: np.random.Generator
) -> JobResult:
    train = job.alice
    if not isinstance(train, lm.PulseTrain):
        raise ConfigError("pulse_train", "BB84 needs Alice's pulses")
    n = train.bits.size
    if job.bob.settings.size != n:
        raise ConfigError("bob_bases", f"needs {n} entries, one per pulse, got {job.bob.settings.size}")
    source = SourceKind.WCP if train.intensities is not None else SourceKind.SINGLE_PHOTON
    decoy = _decoy_source(train.mu) if source is SourceKind.WCP else None
    eve = job.eve
    if eve.kind is EveKind.PNS and source is SourceKind.SINGLE_PHOTON:
        # A single-photon pulse has no spare photon to split off: the attack has nothing to act on.
        eve = Eavesdropper()
    # In slices: the emulator's per-pulse temporaries (photon counts, intensities, click maps) take ~30
    # bytes a pulse, 3 GB for a 1e8-pulse round in one piece. The fibre and the detectors act on each
    # pulse alone; only an after-pulse in the first gate of a slice, after a click in the last gate of the
    # one before, is not drawn (about 1e-3 of a click per slice).
    detected = np.empty(n, dtype=bool)
    bits: list[np.ndarray] = []
    for start in range(0, n, EMULATION_SLICE):
        stop = min(start + EMULATION_SLICE, n)
        _, seen, _ = emulate_bb84(
            stop - start,
            model=model,
            source=source,
            decoy=decoy,
            eve=eve,
            backend=backend,
            rng=rng,
            prepared=PreparedPulses(
                bits=train.bits[start:stop],
                bases=train.bases[start:stop],
                intensity_class=None if train.intensities is None else train.intensities[start:stop],
            ),
            bob_bases=job.bob.settings[start:stop],
        )
        detected[start:stop] = seen.detected
        bits.append(seen.bits[seen.detected])
    record = lm.DetectionRecord(detected=detected.view(np.uint8), bits=np.concatenate(bits))
    return JobResult(link=job.link, round_id=job.round_id, alice=lm.PulsesSent(count=n), bob=record)


def _decoy_source(mu: tuple[float, ...] | None) -> DecoySource:
    """The source Alice's submission names: three finite intensities within the decoy constraints, or a
    ConfigError naming the value (answered to both parties as a ChannelError)."""
    if mu is None or len(mu) != 3:
        raise ConfigError("pulse_train.mu", f"needs 3 decoy intensities, got {0 if mu is None else len(mu)}")
    if not all(math.isfinite(v) for v in mu):
        raise ConfigError("pulse_train.mu", f"intensities must be finite, got {mu}")
    try:
        # Only the intensities reach the emulator: the classes come with the pulses.
        return DecoySource(intensities=(mu[0], mu[1], mu[2]))
    except ConfigError as exc:
        raise ConfigError("pulse_train.mu", exc.message) from None


def _run_e91(
    job: Job, *, model: ChannelModel, backend: MeasurementBackend, rng: np.random.Generator
) -> JobResult:
    a = job.alice
    if not isinstance(a, lm.AnalyserSettings):
        raise ConfigError("settings", "E91 needs Alice's analyser settings")
    n = a.settings.size
    eve = job.eve if job.eve.kind is not EveKind.PNS else Eavesdropper()
    alice_side, bob_side, _ = emulate_e91(
        n,
        model=model,
        eve=eve,
        backend=backend,
        rng=rng,
        alice_settings=a.settings,
        bob_settings=job.bob.settings,
    )
    return JobResult(link=job.link, round_id=job.round_id, alice=_record(alice_side), bob=_record(bob_side))


def _record(side: DetectorClicks) -> lm.DetectionRecord:
    """What one party's detectors recorded, as the channel tells it."""
    return lm.DetectionRecord(detected=side.detected.astype(np.uint8), bits=side.bits[side.detected])
