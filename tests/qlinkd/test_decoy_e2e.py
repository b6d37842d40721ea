"""A bb84-decoy link between two real facility daemons and the channel service on loopback: the source
optimised for the configured fibre keys, a photon-number-splitting eavesdropper attached at run time
through the channel's admin API empties the decoy bound (no key, the alarm at both ends), and rounds key
again once it is detached."""

from __future__ import annotations

import json
from typing import Any

import httpx

from qlinkmed.qcore.channel_model import ChannelModel
from qlinkmed.qcore.decoy_optimiser import optimise
from qlinkmed.qlinkd.testbed.deployment import Deployment
from tests.polling import wait_for
from tests.testbeds import Testbeds

A, B = "hospital-a", "hospital-b"
# 25 km is the shortest fibre at which this PNS attack empties the decoy bound at a small round (at 10 km
# the bound survives it: docs/benchmarks.md, the PNS table); 2e7 pulses key ~7 kbit there in about a
# second of computation per process.
KM, PULSES = 25.0, 20_000_000


def _get(url: str) -> dict[str, Any]:
    return httpx.get(url, timeout=10.0).json()


def _audit(deployment: Deployment, facility: str) -> list[dict[str, Any]]:
    path = deployment.root / "state" / facility / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_decoy_link_keys_pns_raises_the_alarm_and_keys_resume_after_detach(testbeds: Testbeds) -> None:
    deployment = testbeds.write(
        protocol="bb84-decoy", pulses_per_round=PULSES, distance_km=KM, round_timeout_s=60.0
    )
    source = optimise(ChannelModel(distance_km=KM), PULSES, 1e-10, 1e-10)

    def bob() -> dict[str, Any]:
        return _get(deployment.local_url(B) + "/v1/status")["links"][0]

    def pool() -> int:
        return int(_get(deployment.local_url(B) + "/v1/keys")["pools"][0]["pool_bits"])

    def established_after(count: int) -> Any:
        link = bob()
        return link["rounds"]["established"] > count and link["last_round"]["established"] and link

    group = testbeds.start(deployment)
    honest = wait_for(lambda: established_after(0), "an honest decoy round", timeout=120.0)
    # Status and the round's record name the source both ends agreed on at the hello.
    named = {"intensities": list(source.intensities), "probabilities": list(source.probabilities)}
    assert honest["protocol"] == "bb84-decoy" and honest["last_round"]["protocol"] == "bb84-decoy"
    for shown in (honest["decoy"], honest["last_round"]["decoy"]):
        assert {k: shown[k] for k in named} == named and shown["p_x"] == source.p_x
    assert honest["last_round"]["final_key_bits"] > 0
    record = next(r for r in _audit(deployment, B) if r["event"] == "round_established")
    assert record["protocol"] == "bb84-decoy" and record["decoy"]["p_x"] == source.p_x

    httpx.post(
        deployment.admin_url + "/v1/eve",
        json={"kind": "pns", "fraction": 1.0},
        headers=deployment.admin_headers(),
    ).raise_for_status()
    aborted = wait_for(
        lambda: (link := bob())["last_round"]["reason"] == "decoy_bound_empty" and link,
        "the decoy bound emptied by PNS",
        timeout=120.0,
    )
    assert aborted["alarm"] == "decoy_bound_empty" and aborted["last_round"]["final_key_bits"] == 0
    for facility in (A, B):
        metrics = httpx.get(deployment.local_url(facility) + "/metrics").text
        assert f'qlink_eavesdropper_alarm{{peer="{B if facility == A else A}"}} 1.0' in metrics
    assert "ALARM" in group.children[A].log() and "ALARM" in group.children[B].log()
    held = pool()
    wait_for(
        lambda: bob()["rounds"]["aborted"] > aborted["rounds"]["aborted"],
        "another attacked round",
        timeout=120.0,
    )
    assert pool() == held  # an attacked round adds nothing

    httpx.delete(deployment.admin_url + "/v1/eve", headers=deployment.admin_headers()).raise_for_status()
    resumed = wait_for(
        lambda: established_after(aborted["rounds"]["established"]), "keys after detach", timeout=120.0
    )
    assert resumed["alarm"] is None and pool() > held
