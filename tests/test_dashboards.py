"""Static checks of the monitoring assets: Grafana dashboards, Prometheus config and alert rules, the
docker-compose deployment. (tests/test_prometheus.py runs the queries against a real Prometheus.)"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.metrics import METRIC_NAMES, StreamMetrics
from tests.prometheus.promql import ROOT, alert_rules, base_metric, dashboard_queries, metric_names
from tests.prometheus.server import INSTALL_HINT, find_binary

BOARDS = ROOT / "dashboards" / "grafana" / "dashboards"
PROVISIONING = ROOT / "dashboards" / "grafana" / "provisioning"
PROMETHEUS_YML = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
RULES_TEST = ROOT / "tests" / "prometheus" / "rules_test.yml"
HISTOGRAMS = {m.name for m in StreamMetrics().registry.collect() if m.type == "histogram"}


def _load_generator():
    spec = importlib.util.spec_from_file_location("dashboards_generate", ROOT / "dashboards" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _promtool(*args: str) -> subprocess.CompletedProcess:
    binary = find_binary("promtool")
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def _boards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(BOARDS.glob("*.json"))}


# --------------------------------------------------------------------------- dashboards


def test_committed_dashboards_are_the_generators_output():
    assert _load_generator().main(["--check"]) == 0, "run: python dashboards/generate.py"


def test_dashboards_cover_every_topic_of_the_issue():
    titles = {b["title"] for b in _boards().values()}
    for topic in ("Overview", "Model quality", "Drift", "Bandits", "State and snapshots"):
        assert any(topic in t for t in titles), (topic, titles)


def test_every_metric_used_in_dashboards_and_rules_is_defined_in_metrics_py():
    queries = [*dashboard_queries(), *alert_rules()]
    assert len(queries) > 40
    for q in queries:
        for name in metric_names(q.expr):
            assert base_metric(name, HISTOGRAMS) in METRIC_NAMES, (
                f"{q.source} {q.where}: {name} is not in METRIC_NAMES"
            )


def test_metric_names_reject_undefined_and_histogram_suffix_on_a_gauge():
    assert metric_names('sum by (le) (rate(up{job="x"}[5m]))') == {"up"}
    assert base_metric("streamlearn_event_freshness_seconds_bucket", HISTOGRAMS) in METRIC_NAMES
    assert base_metric("streamlearn_model_auc_bucket", HISTOGRAMS) not in METRIC_NAMES


def test_dashboards_use_the_prometheus_datasource_variable_everywhere():
    uids = set()
    for name, board in _boards().items():
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert (
            variables["datasource"]["type"] == "datasource"
            and variables["datasource"]["query"] == "prometheus"
        )
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in board["panels"]:
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, (name, p["title"])
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, p["title"])
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}"
                used = set(re.findall(r"\$\{?(\w+)\}?", t["expr"])) - {
                    "__rate_interval",
                    "__range",
                    "__interval",
                }
                assert used <= set(variables), (name, p["title"], used)
    assert len(uids) == len(_boards())


def test_no_dashboard_groups_or_filters_by_user_or_item_ids():
    for q in dashboard_queries():
        assert not re.search(r"\b(user|item|user_id|item_id|event_id|request_id)\b", q.expr), q


# --------------------------------------------------------------------------- Prometheus config and rules


def test_promtool_accepts_the_rules():
    rules = sorted((ROOT / "dashboards" / "prometheus" / "rules").glob("*.yml"))
    result = _promtool("check", "rules", *map(str, rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_unit_test_histories():
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_required_by_the_issue_exist():
    names = {q.where.removeprefix("rule ") for q in alert_rules()}
    assert {
        "StreamlearnDriftDetected",
        "StreamlearnConsumerLagGrowing",
        "StreamlearnSnapshotStale",
        "StreamlearnDeadLettersRising",
    } <= names


def test_promtool_accepts_prometheus_yml():
    result = _promtool("check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- docker compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def _bind_mounts(service: dict) -> list[tuple[Path, str]]:
    out = []
    for v in service.get("volumes", []):
        parts = v.split(":")
        if parts[0].startswith((".", "/")):
            out.append(((ROOT / parts[0]).resolve(), parts[1]))
    return out


def _host_path(service: dict, container_path: str) -> Path:
    """The repository file a container path of ``service`` comes from (a bind mount)."""
    for host, target in sorted(_bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def _container_ports(service: dict) -> set[int]:
    return {
        int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", []) + service.get("expose", [])
    }


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _image_path(container_path: str) -> Path:
    """The repository file copied to ``container_path`` by the worker's Dockerfile (COPY src dest)."""
    dockerfile = (ROOT / "dashboards" / "docker" / "worker.Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile, re.M)[1]
    for src, dest in re.findall(r"^COPY\s+(\S+)\s+(\S+)\s*$", dockerfile, re.M):
        dest = dest if dest.startswith("/") else f"{workdir}/{dest.removeprefix('./')}"
        if container_path.startswith(dest.rstrip("/") + "/"):
            return ROOT / src / container_path[len(dest.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is not copied into the worker image")


def test_compose_services_of_the_issue_exist(compose):
    services = compose["services"]
    assert {"kafka", "worker", "simulator", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper


def test_compose_refers_only_to_files_that_exist(compose):
    for name, service in compose["services"].items():
        for host, _ in _bind_mounts(service):
            assert host.exists(), f"{name}: {host} does not exist"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
    dockerfile = (ROOT / "dashboards" / "docker" / "worker.Dockerfile").read_text()
    for src, _ in re.findall(r"^COPY\s+(\S+)\s+(\S+)\s*$", dockerfile, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"worker.Dockerfile copies {part}, which does not exist"


def test_compose_worker_config_is_valid_and_agrees_with_kafka_and_prometheus(compose):
    services = compose["services"]
    worker = services["worker"]
    config_path = _image_path(_option(worker["command"], "--config"))
    config = load_config(config_path)  # the worker's own validation
    raw = tomllib.loads(config_path.read_text())
    assert raw["metrics"]["port"] == config.metrics.port
    # Prometheus scrapes the worker service on its metrics port, which the service exposes
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"worker:{config.metrics.port}"]
    assert config.metrics.port in _container_ports(worker)
    assert config.metrics.address == "0.0.0.0"  # reachable from the Prometheus container
    # worker and simulator talk to the broker's internal listener, on the same topic
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"INTERNAL://{config.kafka.bootstrap_servers}" in listeners.split(",")
    sim = [str(a) for a in services["simulator"]["command"]]
    assert _option(sim, "--bootstrap") == config.kafka.bootstrap_servers
    assert _option(sim, "--topic") in config.kafka.topics


def test_compose_prometheus_and_grafana_mounts_agree_with_their_configs(compose):
    services = compose["services"]
    prom, grafana = services["prometheus"], services["grafana"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    assert _host_path(prom, config_flag.split("=", 1)[1]).resolve() == PROMETHEUS_YML.resolve()
    prom_yml = yaml.safe_load(PROMETHEUS_YML.read_text())
    for pattern in prom_yml["rule_files"]:
        host = _host_path(prom, str(Path(pattern).parent))
        assert list(host.glob(Path(pattern).name)), f"rule_files {pattern} matches nothing"
    assert 9090 in _container_ports(prom)
    # Grafana's datasource points at the Prometheus service, its dashboards provider at the mounted JSON
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    assert _host_path(grafana, "/etc/grafana/provisioning").resolve() == PROVISIONING.resolve()
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "streamlearn.yml").read_text())["providers"][0]
    assert _host_path(grafana, provider["options"]["path"]).resolve() == BOARDS.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home).is_file()
