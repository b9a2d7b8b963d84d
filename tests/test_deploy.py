"""The deploy files, checked as far as they can be without a container engine or a cluster.

Images are not built here (no registry for base images is reachable); what can be checked is
that every file parses, references files that exist, and agrees with the package: the entry
point, the config path, the admin port the probes and scrapes use, the signals. The tools that
read these files for real run on them too: docker-compose v1 and the `docker compose` plugin,
`kubectl kustomize` with the Kubernetes API schemas, promtool, systemd-analyze; scripts/test.sh
installs them, so a missing one fails here rather than skipping.
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
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]  # it ships no py.typed
import pytest
import yaml

from shield.config.loader import parse_config
from shield.config.model import ShieldConfig

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_CONFIG = DEPLOY / "config" / "shield.yaml"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def config_at(path: Path) -> ShieldConfig:
    return parse_config(path.read_text(), str(path))


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/test.sh installs it"
    return path


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
    scripts = PROJECT["scripts"]
    entry = json.loads(next(args for name, args in instructions if name == "ENTRYPOINT"))
    command = json.loads(next(args for name, args in instructions if name == "CMD"))
    assert entry == ["shield"] and "shield" in scripts
    assert command[:2] == ["run", "--config"]

    copies = [args.split() for name, args in instructions if name == "COPY" and "--from" not in args]
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    # The config the image runs is the one COPY puts there, and it binds admin for the probes.
    assert [str(COMPOSE_CONFIG.relative_to(ROOT)), command[2]] in copies
    config = config_at(COMPOSE_CONFIG)
    assert config.admin.listen.host == "0.0.0.0"

    users = [args for name, args in instructions if name == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    health = next(args for name, args in instructions if name == "HEALTHCHECK")
    assert f"127.0.0.1:{config.admin.listen.port}/healthz" in health
    assert any(name == "FROM" and "slim" in args for name, args in instructions)


# -- compose ------------------------------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return services


def test_the_compose_file_starts_every_service_from_files_that_exist() -> None:
    services = compose_services()
    assert {"demo", "shield", "redis", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{name}: {source}"

    shield_config = config_at(COMPOSE_CONFIG)
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


def test_compose_mounts_the_config_folder_so_a_replaced_file_is_seen() -> None:
    # A single-file bind mount pins the inode: an editor that saves by rename leaves the
    # container on the old file, and the reload never happens.
    shield = compose_services()["shield"]
    (volume,) = shield["volumes"]
    source, target, mode = volume.split(":")
    assert (DEPLOY / source).is_dir() and mode == "ro"
    assert shield["command"][:2] == ["run", "--config"]
    assert Path(shield["command"][2]).parent == Path(target)
    assert (DEPLOY / source / Path(shield["command"][2]).name).resolve() == COMPOSE_CONFIG


def test_compose_keeps_shield_state_in_its_redis_service() -> None:
    services = compose_services()
    state = config_at(COMPOSE_CONFIG).state
    assert state.backend == "redis" and state.url is not None
    url = urlsplit(state.url)
    assert url.hostname == "redis" and (url.port or 6379) == 6379
    assert services["redis"]["image"].startswith("redis:")
    assert "redis" in services["shield"]["depends_on"]


def test_docker_compose_v1_accepts_the_compose_file() -> None:
    check = subprocess.run(
        [tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_the_docker_compose_plugin_accepts_the_compose_file_and_binds_the_folder() -> None:
    docker = tool("docker")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    assert version.returncode == 0, "`docker compose` is missing: scripts/test.sh installs the plugin"
    check = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    resolved = json.loads(check.stdout)["services"]["shield"]
    (volume,) = resolved["volumes"]
    assert volume["type"] == "bind" and volume["read_only"] is True
    assert Path(volume["source"]) == COMPOSE_CONFIG.parent and volume["target"] == "/etc/shield"


# -- image name ---------------------------------------------------------------------------------


def test_every_file_names_the_shield_image_the_same() -> None:
    image = f"shield:{PROJECT['version']}"
    found: dict[str, str] = {}
    for name, service in compose_services().items():
        if "build" in service:
            found[f"compose.yaml {name}"] = service.get("image", "(none)")
    for (kind, name), doc in kubernetes().items():
        if kind == "Deployment":
            for spec in doc["spec"]["template"]["spec"]["containers"]:
                if spec["name"] == "shield":
                    found[f"kubernetes {name}"] = spec["image"]
    # The build commands in the docs tag what the manifests run.
    for path in (DEPLOY / "Dockerfile", DEPLOY / "README.md", ROOT / "README.md"):
        for line in path.read_text().splitlines():
            words = line.split()
            if "docker" in words and "build" in words and "-t" in words:
                found[f"{path.relative_to(ROOT)}: {line.strip()}"] = words[words.index("-t") + 1]
    assert len(found) >= 4, found
    assert {where: name for where, name in found.items() if name != image} == {}


# -- Prometheus ---------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    # The container path of the rules file, pointed at the repository's copy.
    assert config["rule_files"] == ["/etc/prometheus/shield-alerts.yml"]
    config["rule_files"] = [str(DEPLOY / "prometheus" / "shield-alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    # shield-alerts.test.yml: ShieldDown fires for job="shield" (compose's static scrape) and for
    # job="default/shield" (a PodMonitor's), not for a target that answers or another job.
    tests = DEPLOY / "prometheus" / "shield-alerts.test.yml"
    jobs = {
        series["series"].split('job="')[1].split('"')[0]
        for case in yaml.safe_load(tests.read_text())["tests"]
        for series in case["input_series"]
    }
    assert {"shield", "default/shield"} <= jobs
    check = subprocess.run(
        [tool("promtool"), "test", "rules", tests.name], cwd=tests.parent, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


# -- Kubernetes ---------------------------------------------------------------------------------

KUBERNETES = DEPLOY / "kubernetes"


def kubernetes() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomization lists, by (kind, name)."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for doc in load_all(KUBERNETES / resource):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), resource
            objects[doc["kind"], doc["metadata"]["name"]] = doc
    return objects


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def kubernetes_config(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ShieldConfig:
    """The ConfigMap's config, loaded in the environment the Deployment gives it: each variable
    it fills from a Secret set to a stand-in, and no other."""
    for var in container(objects["Deployment", "shield"]).get("env", []):
        monkeypatch.delenv(var["name"], raising=False)
        if "secretKeyRef" in var.get("valueFrom", {}):
            monkeypatch.setenv(var["name"], "t" * 32)
    rules = tmp_path / "shield.yaml"
    rules.write_text(objects["ConfigMap", "shield-rules"]["data"]["shield.yaml"])
    return config_at(rules)


def test_the_kubernetes_deployment_probes_and_mounts_what_shield_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = kubernetes()
    assert set(objects) == {
        ("ConfigMap", "shield-rules"),
        ("Deployment", "shield"),
        ("Service", "shield"),
        ("PodMonitor", "shield"),
        ("Deployment", "shield-redis"),
        ("Service", "shield-redis"),
        ("NetworkPolicy", "shield-redis"),
    }
    config = kubernetes_config(objects, tmp_path, monkeypatch)
    assert config.admin.listen.host == "0.0.0.0"

    pod = objects["Deployment", "shield"]["spec"]["template"]["spec"]
    shield = container(objects["Deployment", "shield"])
    ports = {port["name"]: port["containerPort"] for port in shield["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin.listen.port}
    assert shield["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert shield["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert shield["args"][:2] == ["run", "--config"]
    # Mounted as a directory: a subPath mount never sees ConfigMap updates, so never reloads.
    (mount,) = [m for m in shield["volumeMounts"] if m["name"] == "rules"]
    assert "subPath" not in mount
    assert str(Path(mount["mountPath"]) / "shield.yaml") == shield["args"][2]
    volume = next(v for v in pod["volumes"] if v["name"] == "rules")
    assert volume["configMap"]["name"] == "shield-rules"
    assert pod["terminationGracePeriodSeconds"] > config.timeouts.shutdown_grace
    assert pod["securityContext"]["runAsNonRoot"] is True

    labels = objects["Deployment", "shield"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service", "shield"]["spec"]
    assert service["selector"] == labels
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    monitor = objects["PodMonitor", "shield"]["spec"]
    assert monitor["selector"]["matchLabels"] == labels
    assert monitor["podMetricsEndpoints"][0]["port"] == "admin"
    assert monitor["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_the_kubernetes_replicas_share_redis_state_trust_the_ingress_and_serve_ctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = kubernetes()
    config = kubernetes_config(objects, tmp_path, monkeypatch)
    assert objects["Deployment", "shield"]["spec"]["replicas"] > 1

    # Limits, bans and ctl closures are shared, in the Redis the kustomization runs.
    assert config.state.backend == "redis" and config.state.url is not None
    url = urlsplit(config.state.url)
    redis_service = objects["Service", "shield-redis"]["spec"]
    assert url.hostname == "shield-redis"
    assert (url.port or 6379) in [p["port"] for p in redis_service["ports"]]
    redis_pod = objects["Deployment", "shield-redis"]["spec"]["template"]
    assert redis_service["selector"].items() <= redis_pod["metadata"]["labels"].items()
    assert redis_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # Only Shield's pods reach it (it has no password).
    policy = objects["NetworkPolicy", "shield-redis"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_pod["metadata"]["labels"].items()
    shield_labels = objects["Deployment", "shield"]["spec"]["template"]["metadata"]["labels"]
    (rule,) = policy["ingress"]
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [shield_labels]

    # key: ip names the client the ingress forwarded for, not the ingress.
    assert config.clients.trusted_proxies

    # The ctl token comes from the Secret, through the variable the Deployment sets.
    ctl = config.admin.ctl
    assert ctl is not None and ctl.token_env is not None and ctl.token_file is None
    env = {var["name"]: var for var in container(objects["Deployment", "shield"])["env"]}
    assert env[ctl.token_env]["valueFrom"]["secretKeyRef"] == {"name": "shield-ctl", "key": "token"}
    # ... and the docs say how to create that Secret.
    create = "kubectl create secret generic shield-ctl --from-literal=token="
    assert create in (KUBERNETES / "kustomization.yaml").read_text()
    assert create in (DEPLOY / "README.md").read_text()


def test_kubectl_kustomize_builds_objects_that_match_the_kubernetes_schemas() -> None:
    built = subprocess.run([tool("kubectl"), "kustomize", str(KUBERNETES)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in docs} == set(kubernetes())
    unchecked, invalid = [], []
    for doc in docs:
        # Every version bundled (1.25 to 1.37 in 1.37.0); strict: an unknown field (a typo, or
        # one from a newer API) is an error.
        for version in sorted(set(kubernetes_validate.utils.all_versions())):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                unchecked.append(doc["kind"])
            except kubernetes_validate.ValidationError as error:
                where = f"{doc['kind']} {doc['metadata']['name']} ({version})"
                invalid.append(f"{where}: {error.message} at {list(error.path)}")
    assert invalid == []
    # The Prometheus Operator's CRD is not among the bundled schemas; its fields are checked above.
    assert set(unchecked) == {"PodMonitor"}


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
