"""The Grafana provisioning and dashboard: wired to the compose services, and querying only real metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import GuardRun
from .deploy_helpers import (
    DASHBOARD_FILE,
    GRAFANA_DIR,
    REPO_ROOT,
    dashboard_queries,
    exported_series,
    metric_names,
    require_tool,
    run_tool,
    tool_output,
)

# Grafana variables in the dashboard, replaced by values PromQL accepts so promtool can parse each query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    provisioning = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = provisioning["datasources"]
    return source


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _grafana_mounts(compose: dict[str, Any]) -> dict[str, str]:
    """Map each bind mount of the grafana service from its container path to its repository path."""
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = source
    return mounts


def test_dashboard_metrics_exported(dashboard: dict[str, Any], guard_run: GuardRun) -> None:
    exported = exported_series(guard_run.guard_metrics)
    queried = set()
    for query in dashboard_queries(dashboard):
        queried |= metric_names(query)
    assert queried
    assert queried - exported == set()


def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    rules = []
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            expression = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expression = expression.replace(variable, value)
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expression})
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")

    result = run_tool([promtool, "check", "rules", rules_file])
    assert result.returncode == 0, tool_output(result)


def test_dashboard_uses_provisioned_datasource(dashboard: dict[str, Any], datasource: dict[str, Any]) -> None:
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == datasource["uid"]


def test_datasource_points_at_prometheus(compose: dict[str, Any], datasource: dict[str, Any]) -> None:
    url = httpx.URL(datasource["url"])
    assert url.host == "prometheus"
    assert url.host in compose["services"]
    assert url.port == 9090
    assert datasource["type"] == "prometheus"


def test_provisioning_mounted(compose: dict[str, Any]) -> None:
    mounts = _grafana_mounts(compose)
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == f"./docker/grafana/provisioning/{kind}"

    provider_file = GRAFANA_DIR / "provisioning" / "dashboards" / "terdguard.yml"
    [provider] = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]
    dashboards_folder = provider["options"]["path"]
    assert (REPO_ROOT / mounts[dashboards_folder] / DASHBOARD_FILE.name).is_file()

    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_folder}/{DASHBOARD_FILE.name}"


def test_dashboard_llr_heatmap(dashboard: dict[str, Any]) -> None:
    heatmaps = [panel for panel in _panels(dashboard) if panel["type"] == "heatmap"]
    assert len(heatmaps) == 1
    [target] = heatmaps[0]["targets"]
    assert "terdguard_guard_llr_bucket" in target["expr"]
    assert target["format"] == "heatmap"
    assert heatmaps[0]["options"]["calculate"] is False


def test_dashboard_llr_threshold_line(dashboard: dict[str, Any]) -> None:
    """terdguard_guard_llr is llr minus threshold, so the threshold line sits at 0."""
    panels = [panel for panel in _panels(dashboard)
              if panel["type"] == "timeseries" and "terdguard_guard_llr_bucket" in panel["targets"][0]["expr"]]
    assert len(panels) == 1
    defaults = panels[0]["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert [step["value"] for step in defaults["thresholds"]["steps"]] == [None, 0]


@pytest.mark.parametrize(("metric", "needle"), [
    ("terdguard_http_requests_total", 'status=~"4..|5.."'),
    ("terdguard_http_requests_total", "sum by (route, method)"),
    ("terdguard_guard_decisions_total", "sum by (action)"),
    ("terdguard_guard_decisions_total", 'action=~"rejected|resampled"'),
    ("terdguard_generation_duration_seconds_bucket", "histogram_quantile(0.99,"),
    ("terdguard_scans_total", "sum by (outcome)"),
    ("terdguard_scan_duration_seconds_bucket", "histogram_quantile(0.5,"),
    ("terdguard_models", "sum by (state)"),
    ("terdguard_queue_depth", "sum by (job, queue)"),
])
def test_dashboard_panel_query(dashboard: dict[str, Any], metric: str, needle: str) -> None:
    expressions = [target["expr"] for panel in _panels(dashboard) for target in panel["targets"]]
    assert any(metric in expression and needle in expression for expression in expressions)
