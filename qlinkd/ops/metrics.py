"""Prometheus metrics of a facility daemon (`LinkMetrics`) and of the channel service (`ChannelMetrics`).

Each daemon owns one CollectorRegistry, so two daemons in one process (tests) never share series, and
serves `render()` on its local API at /metrics. Labels are bounded by configuration (peer ids, SAE ids,
abort reason codes), never by request data.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum, StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from qlinkmed.qlinkd.link.status import QueueStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A round of a few 1e5 pulses takes well under a second locally; long fibres and E91 take longer.
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class KeyCall(StrEnum):
    """Which ETSI 014 call delivered a key: enc_keys (master SAE) or dec_keys (slave SAE)."""

    ENC = "enc"
    DEC = "dec"


def _reason_label(reason: Enum | str) -> str:
    # AbortReason is an IntEnum: label with its name, which stays readable in dashboards.
    return reason.name.lower() if isinstance(reason, Enum) else str(reason)


class LinkMetrics:
    """Per-peer link metrics of one facility daemon."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.qber = Gauge("qlink_qber", "QBER measured in the last round", ["peer"], registry=r)
        self.chsh_s = Gauge("qlink_chsh_s", "CHSH S value of the last E91 round", ["peer"], registry=r)
        self.secret_key_rate_bps = Gauge(
            "qlink_secret_key_rate_bps",
            "Final key bits of the last established round divided by its duration",
            ["peer"],
            registry=r,
        )
        self.pool_bits = Gauge("qlink_pool_bits", "Key bits available in the pool", ["peer"], registry=r)
        self.pool_low_watermark_bits = Gauge(
            "qlink_pool_low_watermark_bits",
            "The pool level below which Alice resumes rounds ([[peer]] low_watermark_bits)",
            ["peer"],
            registry=r,
        )
        self.auth_key_reserve_bits = Gauge(
            "qlink_auth_key_reserve_bits", "Authentication key bits in reserve", ["peer"], registry=r
        )
        self.eavesdropper_alarm = Gauge(
            "qlink_eavesdropper_alarm",
            "1 when the last round aborted on QBER or CHSH evidence of an eavesdropper",
            ["peer"],
            registry=r,
        )
        self.auth_starved = Gauge(
            "qlink_auth_starved",
            "1 when key generation halted because the authentication key is exhausted",
            ["peer"],
            registry=r,
        )
        self.link_up = Gauge(
            "qlink_link_up", "1 when the classical link to the peer is up", ["peer"], registry=r
        )
        self.rounds = Counter(
            "qlink_rounds", "Distillation rounds by outcome", ["peer", "outcome"], registry=r
        )
        self.aborts = Counter("qlink_aborts", "Aborted rounds by reason", ["peer", "reason"], registry=r)
        self.key_bits = Counter("qlink_key_bits", "Final key bits added to the pool", ["peer"], registry=r)
        self.keys_delivered = Counter(
            "qlink_keys_delivered",
            "Keys handed to SAEs through ETSI GS QKD 014",
            ["peer", "sae", "direction"],
            registry=r,
        )
        self.keys_expired = Counter(
            "qlink_keys_expired",
            "Keys held for a slave SAE and deleted unfetched at the end of their lifetime (kme.key_expiry_s)",
            ["peer"],
            registry=r,
        )
        self.keys_expired_bits = Counter(
            "qlink_keys_expired_bits",
            "Key bits deleted unfetched at the end of their lifetime",
            ["peer"],
            registry=r,
        )
        self.data_plane_bytes = Counter(
            "qlink_data_bytes",
            "Study and EHR bytes over the data plane (in: spooled; out: delivered)",
            ["peer", "direction"],
            registry=r,
        )
        self.data_frames_rejected = Counter(
            "qlink_data_frames_rejected",
            "Data-plane frames refused (tampered, replayed, reordered, malformed), by reason",
            ["peer", "reason"],
            registry=r,
        )
        self.transfers = Counter(
            "qlink_transfers",
            "Transfers delivered, by direction and kind",
            ["peer", "direction", "kind"],
            registry=r,
        )
        self.identity_refused = Counter(
            "qlink_identity_refused",
            "Connections this daemon dialled and closed because the certificate named another identity, by"
            " the peer expected and the service (channel, data)",
            ["peer", "service"],
            registry=r,
        )
        self.otp_fallbacks = Counter(
            "qlink_otp_fallbacks",
            "EHR messages sent under AEAD because the pool could not pay for a pad",
            registry=r,
        )
        self.ehr_at_rest = Counter(
            "qlink_ehr_at_rest",
            "EHR messages stored in the inbox, by at-rest form: qotpe (one-time pad from the pool) or aead"
            " (the pool could not pay for the pad)",
            ["form"],
            registry=r,
        )
        self.alarm_latched = Gauge(
            "qlink_alarm_latched",
            "1 while an alarm raised on the link awaits acknowledgement (qlink alarm ack); survives restarts",
            ["peer"],
            registry=r,
        )
        # The data plane's queues: set from the durable records at each scrape (``set_queues``), so they
        # are right after a restart and cost nothing between scrapes.
        self.queued = Gauge(
            "qlink_data_queued", "Outgoing transfers queued for the peer", ["peer"], registry=r
        )
        self.queued_bytes = Gauge(
            "qlink_data_queued_bytes",
            "Bytes of the outgoing transfers queued for the peer",
            ["peer"],
            registry=r,
        )
        self.oldest_queued_age = Gauge(
            "qlink_data_oldest_queued_age_seconds",
            "Age of the oldest transfer queued for the peer (0 when none is queued)",
            ["peer"],
            registry=r,
        )
        self.stuck = Gauge(
            "qlink_data_stuck",
            "Outgoing transfers queued longer than [facility] queue_stuck_after_s (default 600 s)",
            ["peer"],
            registry=r,
        )
        self.refused_recent = Gauge(
            "qlink_data_refused_recent",
            "Outgoing transfers the peer refused or that could not be delivered, in the last 24 hours",
            ["peer"],
            registry=r,
        )
        self.sender_failing = Gauge(
            "qlink_data_sender_failing_seconds",
            "How long the data-plane sender has failed to reach the peer or keep a session (0 when it works)",
            ["peer"],
            registry=r,
        )
        self.unfetched = Gauge(
            "qlink_inbox_unfetched",
            "Transfers from the peer delivered to the inbox and not yet fetched",
            ["peer"],
            registry=r,
        )
        self.oldest_unfetched_age = Gauge(
            "qlink_inbox_oldest_unfetched_age_seconds",
            "Age of the oldest unfetched transfer from the peer (0 when none)",
            ["peer"],
            registry=r,
        )
        # Gateways forward what arrived to the hospital's systems (PACS, interface engine, FHIR server);
        # both label values come from the configuration (gateway kind, destination name), never a request.
        self.forward_failures = Counter(
            "qlink_forward_failures",
            "Failed attempts to forward a delivered item to a hospital system, by gateway and destination",
            ["gateway", "destination"],
            registry=r,
        )
        self.forwarded = Counter(
            "qlink_forwarded",
            "Items forwarded to a hospital system and accepted by it, by gateway and destination",
            ["gateway", "destination"],
            registry=r,
        )
        # The reason label is one of retention's fixed reasons (fetched, forwarded, max_age), never data.
        self.inbox_purges = Counter(
            "qlink_inbox_purged",
            "Delivered transfers whose at-rest copy the retention policy removed, by reason",
            ["reason"],
            registry=r,
        )
        self.inbox_purged_bytes = Counter(
            "qlink_inbox_purged_bytes",
            "Bytes of at-rest copies the retention policy removed, by reason",
            ["reason"],
            registry=r,
        )
        self.round_duration = Histogram(
            "qlink_round_duration_seconds",
            "Wall-clock duration of a distillation round",
            ["peer"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )

    def add_peer(self, peer: str) -> None:
        """Create the series of a configured peer so dashboards and alerts see it before its first round."""
        for gauge in (self.pool_bits, self.auth_key_reserve_bits, self.eavesdropper_alarm, self.auth_starved):
            gauge.labels(peer=peer).set(0)
        self.link_up.labels(peer=peer).set(0)
        # Created, not set: the link's reporter may already have read a latch raised before a restart.
        self.alarm_latched.labels(peer=peer)
        for outcome in ("established", "aborted"):
            self.rounds.labels(peer=peer, outcome=outcome)
        self.key_bits.labels(peer=peer)
        self.keys_expired.labels(peer=peer)
        self.keys_expired_bits.labels(peer=peer)
        self.round_duration.labels(peer=peer)

    def round_established(
        self,
        peer: str,
        *,
        duration_s: float,
        final_key_bits: int,
        qber: float | None = None,
        chsh_s: float | None = None,
    ) -> None:
        """A round ended with key at both ends."""
        self.rounds.labels(peer=peer, outcome="established").inc()
        self.key_bits.labels(peer=peer).inc(final_key_bits)
        self.eavesdropper_alarm.labels(peer=peer).set(0)
        if duration_s > 0:
            self.secret_key_rate_bps.labels(peer=peer).set(final_key_bits / duration_s)
        self._measured(peer, duration_s, qber, chsh_s)

    def round_aborted(
        self,
        peer: str,
        *,
        reason: Enum | str,
        duration_s: float,
        eavesdropper_suspected: bool = False,
        qber: float | None = None,
        chsh_s: float | None = None,
    ) -> None:
        """A round ended without key. `eavesdropper_suspected` raises the alarm (QBER above threshold,
        CHSH not violated); other reasons (timeout, too few detections) clear it."""
        self.rounds.labels(peer=peer, outcome="aborted").inc()
        self.aborts.labels(peer=peer, reason=_reason_label(reason)).inc()
        self.eavesdropper_alarm.labels(peer=peer).set(1 if eavesdropper_suspected else 0)
        self.secret_key_rate_bps.labels(peer=peer).set(0)
        self._measured(peer, duration_s, qber, chsh_s)

    def _measured(self, peer: str, duration_s: float, qber: float | None, chsh_s: float | None) -> None:
        self.round_duration.labels(peer=peer).observe(max(duration_s, 0.0))
        if qber is not None:
            self.qber.labels(peer=peer).set(qber)
        if chsh_s is not None:
            self.chsh_s.labels(peer=peer).set(chsh_s)

    def set_pool(self, peer: str, *, pool_bits: int, auth_reserve_bits: int | None = None) -> None:
        self.pool_bits.labels(peer=peer).set(pool_bits)
        if auth_reserve_bits is not None:
            self.auth_key_reserve_bits.labels(peer=peer).set(auth_reserve_bits)

    def set_low_watermark(self, peer: str, bits: int) -> None:
        self.pool_low_watermark_bits.labels(peer=peer).set(bits)

    def set_auth_starved(self, peer: str, starved: bool) -> None:
        self.auth_starved.labels(peer=peer).set(1 if starved else 0)

    def set_link_up(self, peer: str, up: bool) -> None:
        self.link_up.labels(peer=peer).set(1 if up else 0)

    def delivered(self, peer: str, sae: str, direction: KeyCall | str, count: int = 1) -> None:
        """`count` keys handed to `sae` for the link with `peer`."""
        self.keys_delivered.labels(peer=peer, sae=sae, direction=KeyCall(direction).value).inc(count)

    def expired(self, peer: str, count: int, bits: int) -> None:
        """`count` keys (`bits` in all) held for the link with `peer` expired unfetched."""
        self.keys_expired.labels(peer=peer).inc(count)
        self.keys_expired_bits.labels(peer=peer).inc(bits)

    def data_bytes(self, peer: str, direction: str, count: int) -> None:
        self.data_plane_bytes.labels(peer=peer, direction=direction).inc(count)

    def data_rejected(self, peer: str, reason: str) -> None:
        self.data_frames_rejected.labels(peer=peer, reason=reason).inc()

    def transfer_done(self, peer: str, direction: str, kind: str) -> None:
        self.transfers.labels(peer=peer, direction=direction, kind=kind).inc()

    def identity_refused_on_dial(self, peer: str, service: str) -> None:
        self.identity_refused.labels(peer=peer, service=service).inc()

    def set_alarm_latched(self, peer: str, raised: bool) -> None:
        self.alarm_latched.labels(peer=peer).set(1 if raised else 0)

    def set_queues(self, queues: Iterable[QueueStatus], failing_s: dict[str, float] | None = None) -> None:
        """The data plane's queues as status reads them from the records (call before rendering).
        `failing_s`: per peer, how long its sender has been failing."""
        failing_s = failing_s or {}
        for q in queues:
            peer = q.peer
            self.queued.labels(peer=peer).set(q.queued)
            self.queued_bytes.labels(peer=peer).set(q.queued_bytes)
            self.oldest_queued_age.labels(peer=peer).set(q.oldest_queued_age_s or 0.0)
            self.stuck.labels(peer=peer).set(q.stuck)
            self.refused_recent.labels(peer=peer).set(q.refused)
            self.sender_failing.labels(peer=peer).set(failing_s.get(peer, 0.0))
            self.unfetched.labels(peer=peer).set(q.unfetched)
            self.oldest_unfetched_age.labels(peer=peer).set(q.oldest_unfetched_age_s or 0.0)

    def add_forward(self, gateway: str, destination: str) -> None:
        """Create a configured destination's series, so an alert sees it before its first failure."""
        self.forward_failures.labels(gateway=gateway, destination=destination)
        self.forwarded.labels(gateway=gateway, destination=destination)

    def forward_failed(self, gateway: str, destination: str) -> None:
        """One attempt to forward to `destination` (a configured name) failed; the gateway will retry."""
        self.forward_failures.labels(gateway=gateway, destination=destination).inc()

    def forward_done(self, gateway: str, destination: str) -> None:
        """`destination` accepted one forwarded item."""
        self.forwarded.labels(gateway=gateway, destination=destination).inc()

    def inbox_purged(self, reason: str, nbytes: int) -> None:
        """The retention policy removed one transfer's at-rest copy (`nbytes` of it)."""
        self.inbox_purges.labels(reason=reason).inc()
        self.inbox_purged_bytes.labels(reason=reason).inc(nbytes)

    def ehr_stored_at_rest(self, form: str) -> None:
        self.ehr_at_rest.labels(form=form).inc()

    def otp_fallback(self) -> None:
        self.otp_fallbacks.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (serve with CONTENT_TYPE)."""
        return generate_latest(self.registry)


class ChannelMetrics:
    """Metrics of the quantum channel service."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter(
            "qlink_channel_rounds", "Rounds of pulses carried, by protocol", ["protocol"], registry=r
        )
        self.pulses = Counter(
            "qlink_channel_pulses", "Pulses (BB84) or pairs (E91) carried", ["protocol"], registry=r
        )
        self.eve_attached = Gauge(
            "qlink_channel_eve_attached", "1 while an eavesdropper is attached to the channel", registry=r
        )
        self.eve_attached.set(0)
        self.refused = Counter(
            "qlink_channel_refused",
            "Facility connections refused: a certificate naming no facility of the configured links, a "
            "hello for another facility or an unconfigured link, a connection over its identity's limit",
            ["reason"],
            registry=r,
        )
        self.timeouts = Counter(
            "qlink_channel_timeouts",
            "Connections closed for silence: no TLS handshake or hello in time (hello), no frame for the "
            "idle timeout (idle)",
            ["phase"],
            registry=r,
        )

    def connection_refused(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()

    def connection_timed_out(self, phase: str) -> None:
        self.timeouts.labels(phase=phase).inc()

    def round_carried(self, protocol: str, pulses: int) -> None:
        self.rounds.labels(protocol=protocol).inc()
        self.pulses.labels(protocol=protocol).inc(pulses)

    def set_eve_attached(self, attached: bool) -> None:
        self.eve_attached.set(1 if attached else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
