"""The monitoring kit in monitoring/: Prometheus alert rules checked and unit-tested by promtool (Debian's
`prometheus` package; `./dev test` installs it as root), the Grafana dashboard's queries checked by the
same PromQL parser, and every metric either names one that qlinkd exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from qlinkmed.qlinkd.access.gate_service import GateMetrics
from qlinkmed.qlinkd.access.service import AccessMetrics
from qlinkmed.qlinkd.ops.metrics import LinkMetrics
from tests.paths import REPO

RULES = REPO / "monitoring" / "prometheus" / "qlink-rules.yml"
RULE_TESTS = REPO / "monitoring" / "prometheus" / "qlink-rules.test.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "qlink.json"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself makes for each scrape target, not the daemon."""

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus; `./dev test` installs it as root)",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _rule_exprs() -> list[str]:
    # One expression a line in the rules file (kept so, for this reader and for review).
    return re.findall(r"^\s*expr:\s*(.+?)\s*$", RULES.read_text(), re.MULTILINE)


def _dashboard_exprs() -> list[str]:
    def targets(panels: list[dict[str, object]]) -> list[str]:
        found: list[str] = []
        for panel in panels:
            for target in panel.get("targets", []) or []:  # type: ignore[attr-defined]
                found.append(target["expr"])
            found += targets(panel.get("panels", []) or [])  # type: ignore[arg-type]
        return found

    return targets(json.loads(DASHBOARD.read_text())["panels"])


def _exported() -> set[str]:
    """Every series name a facility daemon's registry can expose, with the suffixes of each type."""
    registry = CollectorRegistry()
    LinkMetrics(registry)
    # The access layer registers its own: break-glass and the intent gate.
    AccessMetrics(registry, lambda: 0)
    GateMetrics(registry)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    return {m.name + s for m in registry.collect() for s in suffixes[m.type]}


def _names(expr: str) -> set[str]:
    # Metric names: identifiers followed by a selector, a range or the end of a term; the qlink_ prefix
    # and Prometheus' own `up`. Functions (rate, sum, ...) are never followed by `{`.
    return set(re.findall(r"\b(qlink_[a-z0-9_]+|up)\b(?=\s*[{\[)\s=<>!]|$)", expr))


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(RULES), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_alert_rules_fire_on_their_unit_tests() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses PromQL in rules files only: each query becomes a recording rule.
    rules = [
        f"      - record: qlink:dashboard_query_{i}\n        expr: {json.dumps(e)}"
        for i, e in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "\n".join(rules) + "\n")
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_and_dashboard_name_only_metrics_the_daemon_exports() -> None:
    exported = _exported()
    for where, exprs in (("rules", _rule_exprs()), ("dashboard", _dashboard_exprs())):
        assert exprs, where
        used = set().union(*(_names(e) for e in exprs))
        allowed = exported | (PROMETHEUS_OWN if where == "rules" else set())
        assert used <= allowed, f"{where} names metrics qlinkd does not export: {sorted(used - allowed)}"


def test_the_kit_covers_what_an_operator_watches() -> None:
    used = set().union(*(_names(e) for e in _dashboard_exprs()))
    for name in (
        "qlink_secret_key_rate_bps",
        "qlink_qber",
        "qlink_pool_bits",
        "qlink_alarm_latched",
        "qlink_rounds_total",
        "qlink_data_queued",
        "qlink_data_oldest_queued_age_seconds",
        "qlink_forward_failures_total",
        "qlink_inbox_unfetched",
    ):
        assert name in used, f"the dashboard shows no {name}"
    alerts = set(re.findall(r"^\s*- alert:\s*(\S+)", RULES.read_text(), re.MULTILINE))
    assert {
        "QlinkAlarmRaised",
        "QlinkLinkDown",
        "QlinkPoolLow",
        "QlinkQueueStuck",
        "QlinkForwardFailing",
    } <= alerts


def test_the_name_finder_sees_selectors_ranges_and_bare_names() -> None:
    # The metric-name check is only as good as this: it must not miss a name, nor take a function for one.
    assert _names('sum by (peer) (rate(qlink_rounds_total{peer=~"$peer"}[5m]))') == {"qlink_rounds_total"}
    assert _names("qlink_pool_bits < qlink_pool_low_watermark_bits") == {
        "qlink_pool_bits",
        "qlink_pool_low_watermark_bits",
    }
    assert _names('up{job="qlink"} == 0') == {"up"}
    assert _names("increase(qlink_forward_failures_total[15m]) > 0") == {"qlink_forward_failures_total"}
