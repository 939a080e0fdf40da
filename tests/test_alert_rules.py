"""prometheus.yml and the alert rules, checked by Prometheus' own `promtool` (Debian `prometheus`)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.servers import REPO_ROOT, installed

RULES = REPO_ROOT / "prometheus" / "alert_rules.yml"
RULE_TESTS = REPO_ROOT / "prometheus" / "alert_rules_test.yml"
RUNBOOK = REPO_ROOT / "docs" / "observability.md"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([installed("promtool"), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def alerting_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_configuration_and_finds_its_rules():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alerting_rules())} rules found" in result.stdout


def test_every_alert_fires_and_clears_in_the_rule_unit_tests():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alerting_rules():
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == rule["alert"]}
        assert outcomes == {True, False}, f"{rule['alert']} is not seen both firing and clear"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_says_what_happened_and_points_at_its_runbook_section(rule):
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert (REPO_ROOT / path) == RUNBOOK and anchor == rule["alert"].lower()
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert rule["alert"] in headings, f"docs/observability.md has no section {rule['alert']}"
    assert rule["labels"]["severity"] in ("critical", "warning")


def test_prometheus_scrapes_the_services_the_dashboards_and_alerts_read():
    config = yaml.safe_load((REPO_ROOT / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"prometheus", "inference-api", "pushgateway", "airflow-statsd", "node"} <= set(jobs)
    assert jobs["pushgateway"]["honor_labels"] is True  # the pushed job="diabetes_pipeline" is kept
    assert jobs["inference-api"]["dns_sd_configs"][0]["names"] == ["inference-api-pods"]  # every replica
    assert jobs["node"]["dns_sd_configs"] == [  # every node-exporter pod (a DaemonSet: one per node)
        {"names": ["node-exporter"], "type": "A", "port": 9100, "refresh_interval": "15s"}
    ]
