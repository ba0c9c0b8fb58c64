"""The Prometheus scrape config, and the guard's and sampler's real /metrics output, checked by promtool."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .conftest import GuardRun
from .deploy_helpers import PROMETHEUS_CONFIG, exported_series, require_tool, run_tool, tool_output

# The metric families every guard exports, whatever requests it has served.
GUARD_FAMILIES = (
    "terdguard_http_requests_total", "terdguard_http_request_duration_seconds", "terdguard_guard_decisions_total",
    "terdguard_guard_llr", "terdguard_guard_threshold", "terdguard_generation_duration_seconds",
    "terdguard_scan_duration_seconds", "terdguard_scans_total", "terdguard_queue_depth", "terdguard_models",
)


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run_tool([promtool, "check", "config", PROMETHEUS_CONFIG])
    assert result.returncode == 0, tool_output(result)


@pytest.mark.parametrize("app", ["guard", "sampler"])
def test_promtool_check_metrics(guard_run: GuardRun, app: str) -> None:
    promtool = require_tool("promtool", "prometheus")
    exposition = guard_run.guard_metrics if app == "guard" else guard_run.sampler_metrics
    result = run_tool([promtool, "check", "metrics"], stdin=exposition)
    assert result.returncode == 0, tool_output(result)
    assert result.stdout.strip() == "", tool_output(result)


def test_guard_exports_families(guard_run: GuardRun) -> None:
    declared = {line.split()[2] for line in guard_run.guard_metrics.splitlines() if line.startswith("# TYPE ")}
    for family in GUARD_FAMILIES:
        assert family in declared


def test_guard_llr_bucket_at_threshold(guard_run: GuardRun) -> None:
    """The llr histogram observes llr minus threshold, so the bucket bound 0 is the threshold."""
    if not guard_run.models:
        pytest.skip("zoo not built yet, so no sample was screened")
    assert re.search(r'^terdguard_guard_llr_bucket\{le="0\.0",model="[^"]+"\} ', guard_run.guard_metrics, re.MULTILINE)


def test_scrape_targets_match_compose(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"guard": ["guard:8000"], "sampler": ["sampler:8000"]}
    for job in config["scrape_configs"]:
        assert job["metrics_path"] == "/metrics"
    for service in targets:
        assert service in compose["services"]


def test_exported_series_suffixes(guard_run: GuardRun) -> None:
    series = exported_series(guard_run.guard_metrics)
    assert {"terdguard_guard_llr_bucket", "terdguard_guard_llr_sum", "terdguard_guard_llr_count"} <= series
    assert "terdguard_scans_total" in series
    assert "terdguard_guard_llr" not in series
