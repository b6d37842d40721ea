"""Prometheus metrics: what a round, a delivery and the channel service leave in the exposition text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qlinkmed.qcore.errors import AbortReason
from qlinkmed.qlinkd.ops.metrics import CONTENT_TYPE, ChannelMetrics, KeyCall, LinkMetrics


def _samples(payload: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the exposition with Prometheus' own parser: {(name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(payload.decode())
        for sample in family.samples
    }


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_established_round_sets_rate_qber_and_counters() -> None:
    metrics = LinkMetrics()
    metrics.add_peer("hospital-b")
    metrics.round_established("hospital-b", duration_s=0.5, final_key_bits=10_000, qber=0.021)
    metrics.round_established("hospital-b", duration_s=2.0, final_key_bits=6_000, qber=0.03)
    s = _samples(metrics.render())

    assert _get(s, "qlink_rounds_total", peer="hospital-b", outcome="established") == 2
    assert _get(s, "qlink_rounds_total", peer="hospital-b", outcome="aborted") == 0
    assert _get(s, "qlink_key_bits_total", peer="hospital-b") == 16_000
    assert _get(s, "qlink_secret_key_rate_bps", peer="hospital-b") == 3_000  # last round: 6000 / 2
    assert _get(s, "qlink_qber", peer="hospital-b") == pytest.approx(0.03)
    assert _get(s, "qlink_round_duration_seconds_count", peer="hospital-b") == 2
    assert _get(s, "qlink_round_duration_seconds_sum", peer="hospital-b") == 2.5
    assert _get(s, "qlink_round_duration_seconds_bucket", peer="hospital-b", le="1.0") == 1
    assert _get(s, "qlink_eavesdropper_alarm", peer="hospital-b") == 0


def test_aborted_round_raises_the_alarm_and_counts_the_reason() -> None:
    metrics = LinkMetrics()
    metrics.round_aborted(
        "hospital-b",
        reason=AbortReason.QBER_ABOVE_THRESHOLD,
        duration_s=0.4,
        eavesdropper_suspected=True,
        qber=0.25,
    )
    metrics.round_aborted("hospital-c", reason=AbortReason.CHSH_NOT_VIOLATED, duration_s=1, chsh_s=1.9)
    s = _samples(metrics.render())
    assert _get(s, "qlink_aborts_total", peer="hospital-b", reason="qber_above_threshold") == 1
    assert _get(s, "qlink_aborts_total", peer="hospital-c", reason="chsh_not_violated") == 1
    assert _get(s, "qlink_rounds_total", peer="hospital-b", outcome="aborted") == 1
    assert _get(s, "qlink_eavesdropper_alarm", peer="hospital-b") == 1
    assert _get(s, "qlink_eavesdropper_alarm", peer="hospital-c") == 0
    assert _get(s, "qlink_chsh_s", peer="hospital-c") == pytest.approx(1.9)
    assert _get(s, "qlink_secret_key_rate_bps", peer="hospital-b") == 0


def test_pool_link_and_delivery_gauges() -> None:
    metrics = LinkMetrics()
    metrics.set_pool("hospital-b", pool_bits=123_456, auth_reserve_bits=4096)
    metrics.set_link_up("hospital-b", True)
    metrics.set_auth_starved("hospital-b", True)
    metrics.delivered("hospital-b", "pacs-a", KeyCall.ENC, 3)
    metrics.delivered("hospital-b", "pacs-b", "dec")
    s = _samples(metrics.render())
    assert _get(s, "qlink_pool_bits", peer="hospital-b") == 123_456
    assert _get(s, "qlink_auth_key_reserve_bits", peer="hospital-b") == 4096
    assert _get(s, "qlink_link_up", peer="hospital-b") == 1
    assert _get(s, "qlink_auth_starved", peer="hospital-b") == 1
    assert _get(s, "qlink_keys_delivered_total", peer="hospital-b", sae="pacs-a", direction="enc") == 3
    assert _get(s, "qlink_keys_delivered_total", peer="hospital-b", sae="pacs-b", direction="dec") == 1
    with pytest.raises(ValueError):
        metrics.delivered("hospital-b", "pacs-a", "sideways")


def test_added_peer_is_visible_before_any_round() -> None:
    metrics = LinkMetrics()
    metrics.add_peer("hospital-b")
    text = metrics.render().decode()
    assert 'qlink_link_up{peer="hospital-b"} 0.0' in text
    assert 'qlink_pool_bits{peer="hospital-b"} 0.0' in text


def test_two_daemons_do_not_share_series() -> None:
    a, b = LinkMetrics(), LinkMetrics()
    a.set_link_up("hospital-b", True)
    assert b"hospital-b" in a.render()
    assert b"hospital-b" not in b.render()
    assert CONTENT_TYPE.startswith("text/plain")


def test_channel_metrics() -> None:
    metrics = ChannelMetrics()
    s = _samples(metrics.render())
    assert _get(s, "qlink_channel_eve_attached") == 0
    metrics.round_carried("bb84", 400_000)
    metrics.round_carried("bb84", 400_000)
    metrics.set_eve_attached(True)
    s = _samples(metrics.render())
    assert _get(s, "qlink_channel_rounds_total", protocol="bb84") == 2
    assert _get(s, "qlink_channel_pulses_total", protocol="bb84") == 800_000
    assert _get(s, "qlink_channel_eve_attached") == 1


def test_forwards_count_failures_and_successes_per_gateway_and_destination() -> None:
    metrics = LinkMetrics()
    metrics.add_forward("dicom", "PACS_MAIN")
    s = _samples(metrics.render())
    # A configured destination is visible (at 0) before its first failure, so an alert can watch it.
    assert _get(s, "qlink_forward_failures_total", gateway="dicom", destination="PACS_MAIN") == 0
    metrics.forward_failed("dicom", "PACS_MAIN")
    metrics.forward_failed("dicom", "PACS_MAIN")
    metrics.forward_done("dicom", "PACS_MAIN")
    metrics.forward_failed("hl7", "engine")
    s = _samples(metrics.render())
    assert _get(s, "qlink_forward_failures_total", gateway="dicom", destination="PACS_MAIN") == 2
    assert _get(s, "qlink_forwarded_total", gateway="dicom", destination="PACS_MAIN") == 1
    assert _get(s, "qlink_forward_failures_total", gateway="hl7", destination="engine") == 1


def test_a_peer_added_after_its_latch_was_read_keeps_it_raised() -> None:
    # The daemon reads each link's latch (restart) before it creates the peer's series.
    metrics = LinkMetrics()
    metrics.set_alarm_latched("hospital-b", True)
    metrics.add_peer("hospital-b")
    metrics.add_peer("hospital-c")
    s = _samples(metrics.render())
    assert _get(s, "qlink_alarm_latched", peer="hospital-b") == 1
    assert _get(s, "qlink_alarm_latched", peer="hospital-c") == 0
