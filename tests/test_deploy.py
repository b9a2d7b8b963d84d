"""The deploy files, checked as far as they can be without a container engine or a cluster.

Images are not built here (no registry for base images is reachable); what can be checked is
that every file parses, references files that exist, and agrees with the package: the entry
point, the config path, the admin port the probes and scrapes use, the signals.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shield.config.loader import parse_config
from shield.config.model import ShieldConfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def config_at(path: Path) -> ShieldConfig:
    return parse_config(path.read_text(), str(path))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


# -- Dockerfile ---------------------------------------------------------------------------------


def test_the_dockerfile_runs_the_package_entry_point_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = json.loads(next(args for name, args in instructions if name == "ENTRYPOINT"))
    command = json.loads(next(args for name, args in instructions if name == "CMD"))
    assert entry == ["shield"] and "shield" in scripts
    assert command[:2] == ["run", "--config"]

    copies = [args.split() for name, args in instructions if name == "COPY" and "--from" not in args]
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    # The config the image runs is the one COPY puts there, and it binds admin for the probes.
    assert ["deploy/shield.yaml", command[2]] in copies
    config = config_at(DEPLOY / "shield.yaml")
    assert config.admin.listen.host == "0.0.0.0"

    users = [args for name, args in instructions if name == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    health = next(args for name, args in instructions if name == "HEALTHCHECK")
    assert f"127.0.0.1:{config.admin.listen.port}/healthz" in health
    assert any(name == "FROM" and "slim" in args for name, args in instructions)


# -- compose ------------------------------------------------------------------------------------


def test_the_compose_file_starts_every_service_from_files_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"demo", "shield", "redis", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{name}: {source}"

    shield_config = config_at(DEPLOY / "shield.yaml")
    assert shield_config.upstream.host == "demo"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"shield:{shield_config.admin.listen.port}"]

    # Grafana: the provider's folder is where compose mounts the dashboards.
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/shield.yaml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_docker_compose_accepts_the_compose_file() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (the structural test above still ran)")
    check = subprocess.run(
        [compose, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    # The container path of the rules file, pointed at the repository's copy.
    assert config["rule_files"] == ["/etc/prometheus/shield-alerts.yml"]
    config["rule_files"] = [str(DEPLOY / "prometheus" / "shield-alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


# -- Kubernetes ---------------------------------------------------------------------------------


def kubernetes() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for doc in load_all(DEPLOY / "kubernetes" / resource):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), resource
            objects[doc["kind"]] = doc
    return objects


def test_the_kubernetes_deployment_probes_and_mounts_what_shield_serves(tmp_path: Path) -> None:
    objects = kubernetes()
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "PodMonitor"}
    rules = tmp_path / "shield.yaml"
    rules.write_text(objects["ConfigMap"]["data"]["shield.yaml"])
    config = config_at(rules)
    assert config.admin.listen.host == "0.0.0.0"

    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin.listen.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["args"][:2] == ["run", "--config"]
    # Mounted as a directory: a subPath mount never sees ConfigMap updates, so never reloads.
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "rules"]
    assert "subPath" not in mount
    assert str(Path(mount["mountPath"]) / "shield.yaml") == container["args"][2]
    volume = next(v for v in pod["volumes"] if v["name"] == "rules")
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] > config.timeouts.shutdown_grace
    assert pod["securityContext"]["runAsNonRoot"] is True

    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Service"]["spec"]["selector"] == labels
    assert [p["targetPort"] for p in objects["Service"]["spec"]["ports"]] == ["http"]
    monitor = objects["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"] == labels
    assert monitor["podMetricsEndpoints"][0]["port"] == "admin"
    assert monitor["podMetricsEndpoints"][0]["path"] == "/metrics"


# -- systemd ------------------------------------------------------------------------------------


def systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "shield.service")
    return unit


def test_the_systemd_unit_runs_shield_and_reloads_with_sighup() -> None:
    service = systemd_unit()["Service"]
    start = shlex.split(service["ExecStart"])
    assert Path(start[0]).name == "shield" and start[1:3] == ["run", "--config"]
    assert shlex.split(service["ExecStartPre"]) == [start[0], "check", *start[2:]]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the structural test above still ran)")
    # The unit names /opt/shield/bin/shield; verify a copy pointing at this checkout's shield.
    here = Path(sys.executable).parent / "shield"
    unit = (DEPLOY / "systemd" / "shield.service").read_text().replace("/opt/shield/bin/shield", str(here))
    (tmp_path / "shield.service").write_text(unit)
    check = subprocess.run(
        [analyze, "verify", str(tmp_path / "shield.service")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "shield.service" not in check.stderr, check.stderr
