"""deploy/: kustomize renders; compose, Kubernetes, Prometheus, Grafana and the CLI agree.

One image (``freshet:<project version>``), the same ``freshet`` commands, the same ports
(trainer /metrics 9400, replica HTTP 8080), the same configs (deploy/k8s/base/config is a
byte-identical copy of configs/), and dashboards that only query series the code exports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs.job import JobConfig
from configs.serving import ServeFile
from pipeline.cli.main import COMMANDS
from pipeline.serving.metrics import ReplicaMetrics
from pipeline.training.exporter import DEFAULT_PORT, TrainerMetrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"freshet:{VERSION}"
TRAINER_PORT = DEFAULT_PORT
REPLICA_PORT = 8080
CONFIG_DIR = "/etc/freshet"
OVERLAYS = ["dev", "servicemonitor", "production"]


def render(path: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: cannot render deploy/k8s")
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(
        f"no {kind} {name} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    )


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
    return data


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# -- configs ---------------------------------------------------------------------------------


def test_k8s_configs_are_byte_identical_copies_of_configs() -> None:
    sources = {p.name: p.read_bytes() for p in (REPO / "configs").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (K8S / "base" / "config").iterdir()}
    assert sorted(copies) == sorted(sources), "deploy/k8s/base/config must mirror configs/*.yaml"
    for name, data in sources.items():
        assert copies[name] == data, f"deploy/k8s/base/config/{name} drifted from configs/{name}"
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (generated,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "freshet-config"]
    assert sorted(generated["files"]) == sorted(f"config/{n}" for n in sources)


# -- Kubernetes ------------------------------------------------------------------------------


def test_kustomize_renders_trainer_and_replicas() -> None:
    objects = render(K8S)
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "freshet"
    }

    config = next(o for o in objects if o["metadata"]["name"].startswith("freshet-config"))
    assert config["data"] == {p.name: p.read_text() for p in (REPO / "configs").glob("*.yaml")}

    trainer = find(objects, "StatefulSet", "freshet-trainer")
    headless = find(objects, "Service", "freshet-trainer")
    assert headless["spec"]["clusterIP"] == "None"
    assert trainer["spec"]["serviceName"] == "freshet-trainer"
    assert {t["metadata"]["name"] for t in trainer["spec"]["volumeClaimTemplates"]} == {"store"}
    tc = container(trainer)
    assert tc["image"] == IMAGE
    assert tc["args"][:3] == ["train", "--config", f"{CONFIG_DIR}/fraud.yaml"]
    assert tc["ports"][0]["containerPort"] == TRAINER_PORT
    assert headless["spec"]["ports"][0]["port"] == TRAINER_PORT
    annotations = trainer["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(TRAINER_PORT)
    env = {e["name"]: e.get("value") for e in tc["env"]}
    assert env["FRESHET_METRICS_PORT"] == str(TRAINER_PORT)
    mounts = {m["name"]: m["mountPath"] for m in tc["volumeMounts"]}
    assert mounts["config"] == CONFIG_DIR

    replicas = find(objects, "Deployment", "freshet-replica")
    assert replicas["spec"]["replicas"] == 2
    rc = container(replicas)
    assert rc["image"] == IMAGE
    assert rc["args"][:3] == ["serve", "--config", f"{CONFIG_DIR}/fraud.yaml"]
    assert [p["containerPort"] for p in rc["ports"]] == [REPLICA_PORT]
    service = find(objects, "Service", "freshet-replica")
    assert service["spec"]["ports"][0]["port"] == REPLICA_PORT
    annotations = replicas["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(REPLICA_PORT)
    assert rc["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # the generated ConfigMaps' hashed names are what the workloads reference
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for workload in (trainer, replicas):
        c = container(workload)
        assert {e["configMapRef"]["name"] for e in c["envFrom"]} <= names
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        assert {v["configMap"]["name"] for v in volumes if "configMap" in v} <= names


@pytest.mark.parametrize("path", [K8S, *(K8S / "overlays" / o for o in OVERLAYS)])
def test_the_trainer_runs_n_ranks_that_meet_at_pod_0(path: Path) -> None:
    objects = render(path)
    trainer = find(objects, "StatefulSet", "freshet-trainer")
    spec = trainer["spec"]
    tc = container(trainer)
    args = tc["args"]
    ranks = spec["replicas"]
    assert ranks >= 2
    assert int(flag(args, "--nnodes")) == ranks
    assert spec["podManagementPolicy"] == "Parallel"  # no rank trains until all have joined
    # each pod's rank is its StatefulSet index, from the label Kubernetes sets on it
    assert flag(args, "--node-rank") == "$(POD_INDEX)"
    (index,) = [e for e in tc["env"] if e["name"] == "POD_INDEX"]
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    # the rendezvous is pod 0's stable DNS name, reachable before the pods are ready
    headless = find(objects, "Service", spec["serviceName"])
    assert flag(args, "--master-addr") == f"freshet-trainer-0.{spec['serviceName']}"
    port = int(flag(args, "--master-port"))
    assert ("rendezvous", port) in {(p["name"], p["containerPort"]) for p in tc["ports"]}
    assert port in [p["port"] for p in headless["spec"]["ports"]]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    # a long checkpoint restore is covered by the startup probe, not killed by liveness
    startup, live = tc["startupProbe"], tc["livenessProbe"]
    assert startup["httpGet"] == live["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert "initialDelaySeconds" not in live
    # the store is per rank; the coordinated checkpoints are one volume every rank shares
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["store"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
    pvc = find(objects, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    env = {e["name"]: e.get("value") for e in tc["env"]}
    mounts = {m["name"]: m["mountPath"] for m in tc["volumeMounts"]}
    assert mounts["checkpoints"] == env["FRESHET_OPERATORS__CHECKPOINT__DIR"]


def test_compose_runs_two_ranks_like_the_statefulset() -> None:
    base, two = compose()["services"], compose("docker-compose.2ranks.yml")["services"]
    k8s = container(find(render(K8S), "StatefulSet", "freshet-trainer"))
    for rank, name in enumerate(("trainer", "trainer-rank1")):
        expanded = {
            "$(POD_INDEX)": str(rank),
            "freshet-trainer-0.freshet-trainer": "trainer",  # compose's name for pod 0
        }
        assert two[name]["command"] == [expanded.get(a, a) for a in k8s["args"]]
    rank1 = two["trainer-rank1"]
    assert rank1["image"] == base["trainer"]["image"] == IMAGE
    assert rank1["environment"] == base["trainer"]["environment"]
    assert set(rank1["volumes"]) - set(base["trainer"]["volumes"]) == {
        "trainer-rank1-data:/var/lib/freshet",
        "checkpoints:/var/lib/freshet/checkpoints",
    }
    assert two["trainer"]["volumes"] == ["checkpoints:/var/lib/freshet/checkpoints"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    trainer = container(find(objects, "StatefulSet", "freshet-trainer"))
    assert trainer["image"].endswith(IMAGE)
    if overlay == "dev":
        kafka = container(find(objects, "StatefulSet", "kafka"))
        compose_kafka = compose()["services"]["kafka"]
        assert kafka["image"] == compose_kafka["image"]
        assert {e["name"]: e["value"] for e in kafka["env"]} == {
            k: str(v) for k, v in compose_kafka["environment"].items()
        }
        replay = container(find(objects, "Job", "freshet-replay"))
        assert replay["image"] == IMAGE
        assert replay["args"] == compose()["services"]["replay"]["command"]
    if overlay == "servicemonitor":
        monitors = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceMonitor"}
        assert monitors == {"freshet-trainer", "freshet-replica"}
    if overlay == "production":
        assert trainer["image"] == f"registry.example.com/ml/{IMAGE}"
        assert find(objects, "Deployment", "freshet-replica")["spec"]["replicas"] == 4
        env = next(o for o in objects if o["metadata"]["name"].startswith("freshet-env"))
        assert env["data"]["FRESHET_SOURCE__SECURITY__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert "KAFKA_PASSWORD" in {e["name"] for e in trainer["env"]}


# -- compose ---------------------------------------------------------------------------------


def test_the_deployed_trainer_schedules_its_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = container(find(render(K8S), "StatefulSet", "freshet-trainer"))
    for e in trainer["env"]:
        if e["name"].startswith("FRESHET_OPERATORS__"):
            monkeypatch.setenv(e["name"], e["value"])
    ops = JobConfig.from_yaml(REPO / "configs" / "fraud.yaml").operators
    assert ops is not None and ops.checkpoint is not None
    assert ops.checkpoint.dir == "/var/lib/freshet/checkpoints"
    every = {s.name: s.every for s in ops.to_schedules()}
    assert every == {
        "tier_migration": 30.0,
        "incremental_checkpoint": 60.0,
        "full_checkpoint": "0 3 * * *",
        "metrics_report": 15.0,
    }


def test_compose_uses_the_k8s_image_commands_and_ports() -> None:
    services = compose()["services"]
    objects = render(K8S)
    trainer_k8s = container(find(objects, "StatefulSet", "freshet-trainer"))
    replica_k8s = container(find(objects, "Deployment", "freshet-replica"))

    trainer = services["trainer"]
    assert trainer["image"] == IMAGE == trainer_k8s["image"]
    assert trainer["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    # compose's default trainer is one rank (docker-compose.2ranks.yml adds the second)
    assert trainer["command"] == trainer_k8s["args"][:3]
    assert trainer["ports"] == [f"{TRAINER_PORT}:{TRAINER_PORT}"]
    assert "../configs:/etc/freshet:ro" in trainer["volumes"]
    k8s_env = {e["name"]: e.get("value") for e in trainer_k8s["env"]}
    for key in (
        "FRESHET_METRICS_PORT",
        "FRESHET_METRICS_ADDR",
        "FRESHET_STORE__PATH",
        "FRESHET_PUBLISH__TOPIC",
        "FRESHET_PUBLISH__SNAPSHOT_DIR",
        "FRESHET_OPERATORS__CHECKPOINT__DIR",
        "FRESHET_OPERATORS__SCHEDULES",
    ):
        assert trainer["environment"][key] == k8s_env[key], key

    for name in ("replica-1", "replica-2"):
        replica = services[name]
        assert replica["image"] == IMAGE == replica_k8s["image"]
        expanded = {"$(POD_NAME)": name, "$(KAFKA_BOOTSTRAP)": "kafka:9092"}
        assert replica["command"] == [expanded.get(arg, arg) for arg in replica_k8s["args"]]
        assert replica["ports"][0].endswith(f":{REPLICA_PORT}")

    assert services["replay"]["image"] == IMAGE
    for key in ("FRESHET_SOURCE__BOOTSTRAP_SERVERS", "FRESHET_PUBLISH__BOOTSTRAP_SERVERS"):
        assert trainer["environment"][key] == '["kafka:9092"]'
    replay = services["replay"]["command"]
    assert replay[replay.index("--bootstrap-server") + 1] == "kafka:9092"
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (env,) = [g for g in base["configMapGenerator"] if g["name"] == "freshet-env"]
    assert 'FRESHET_SOURCE__BOOTSTRAP_SERVERS=["kafka:9092"]' in env["literals"]
    assert 'FRESHET_PUBLISH__BOOTSTRAP_SERVERS=["kafka:9092"]' in env["literals"]
    assert "KAFKA_BOOTSTRAP=kafka:9092" in env["literals"]
    # the delta topic the trainer publishes to is the one the replicas follow
    topic = replica_k8s["args"][replica_k8s["args"].index("--topic") + 1]
    assert trainer["environment"]["FRESHET_PUBLISH__TOPIC"] == topic
    assert f"--topic {topic} " in " ".join(services["topics"]["command"])


def _commands() -> list[tuple[str, list[str]]]:
    out = [
        (f"{file}:{name}", [str(a) for a in svc["command"]])
        for file in ("docker-compose.yml", "docker-compose.2ranks.yml")
        for name, svc in compose(file)["services"].items()
        if svc.get("image") == IMAGE or (file != "docker-compose.yml" and "command" in svc)
    ]
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):  # a JSON patch
                continue
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                if c.get("image") == IMAGE:
                    # what the kubelet substitutes: a pod's index
                    args = [{"$(POD_INDEX)": "1"}.get(a, a) for a in c["args"]]
                    out.append((f"k8s:{path.relative_to(K8S)}:{c['name']}", args))
    return out


@pytest.mark.parametrize(("where", "argv"), _commands(), ids=[w for w, _ in _commands()])
def test_deploy_commands_parse_with_the_cli(where: str, argv: list[str]) -> None:
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        pytest.skip(f"{where}: `freshet {name}` is not registered in pipeline/cli/main.py yet")
    parser = argparse.ArgumentParser(prog=f"freshet {name}", exit_on_error=False)
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    try:
        args = parser.parse_args(rest)
    except (argparse.ArgumentError, SystemExit) as err:
        raise AssertionError(f"{where}: freshet {' '.join(argv)}: {err}") from err
    config = getattr(args, "config", None)
    if config is not None:
        assert config.startswith(f"{CONFIG_DIR}/")
        load = ServeFile.from_yaml if name == "serve" else JobConfig.from_yaml
        load(REPO / "configs" / Path(config).name)


# -- the embedding service -------------------------------------------------------------------

EMBED_PORT = 8815
EMBED_METRICS_PORT = 9401


def _flag(args: list[str], name: str) -> str:
    return str(args[args.index(name) + 1])


def test_embedding_service_statefulset_has_one_pod_and_volume_per_shard() -> None:
    objects = render(K8S)
    embed = find(objects, "StatefulSet", "freshet-embed")
    headless = find(objects, "Service", "freshet-embed")
    assert headless["spec"]["clusterIP"] == "None"
    assert embed["spec"]["serviceName"] == "freshet-embed"
    c = container(embed)
    assert c["image"] == IMAGE
    args = [str(a) for a in c["args"]]
    assert args[0] == "embed-serve" and "--shard-from-hostname" in args
    assert int(_flag(args, "--num-shards")) == embed["spec"]["replicas"] == 2
    assert int(_flag(args, "--port")) == EMBED_PORT
    assert int(_flag(args, "--metrics-port")) == EMBED_METRICS_PORT
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"flight": EMBED_PORT, "metrics": EMBED_METRICS_PORT}
    annotations = embed["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(EMBED_METRICS_PORT)
    (claim,) = embed["spec"]["volumeClaimTemplates"]
    (mount,) = c["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert mount["mountPath"] == _flag(args, "--path")


def test_compose_embedding_shards_match_k8s() -> None:
    services = compose()["services"]
    k8s = [str(a) for a in container(find(render(K8S), "StatefulSet", "freshet-embed"))["args"]]
    shards = sorted(n for n in services if n.startswith("embed-"))
    assert shards == ["embed-0", "embed-1"]
    for i, name in enumerate(shards):
        svc = services[name]
        args = [str(a) for a in svc["command"]]
        assert svc["image"] == IMAGE
        assert int(_flag(args, "--shard")) == i
        for flag in ("--num-shards", "--port", "--metrics-port", "--path"):
            assert _flag(args, flag) == _flag(k8s, flag), flag
        assert any(v.endswith(":" + _flag(args, "--path")) for v in svc["volumes"])
    text = (DEPLOY / "Dockerfile").read_text()
    assert "RUN pip install .[service]" in text  # pyarrow: embed-serve runs in the image


# -- Prometheus, Grafana, Dockerfile ---------------------------------------------------------


def test_prometheus_scrapes_the_compose_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets["freshet-trainer"] == [f"trainer:{TRAINER_PORT}"]
    assert targets["freshet-replica"] == [f"replica-1:{REPLICA_PORT}", f"replica-2:{REPLICA_PORT}"]
    assert set(compose()["services"]) >= {"trainer", "replica-1", "replica-2", "prometheus"}


def _exported_series() -> set[str]:
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for registry in (TrainerMetrics(None).registry, ReplicaMetrics("r").registry):
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_both_registries_carry_the_standard_process_metrics() -> None:
    exported = _exported_series()
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_collections_total",
        "python_info",
    ):
        assert name in exported, name


RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_RULE = K8S / "overlays" / "servicemonitor" / "prometheusrule.yaml"
ALERTS = {
    "FreshetConsumerLagGrowing",
    "FreshetWindowAucDrop",
    "FreshetDeadLetterRateHigh",
    "FreshetStoreDiskFailing",
    "FreshetReplicaStale",
}


def test_alert_rules_cover_the_incidents_and_query_exported_series() -> None:
    rules = yaml.safe_load(RULES.read_text())
    operator = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == rules["groups"]  # one set of alerts, two packagings
    assert operator["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {r["alert"] for r in alerts} == ALERTS
    for rule in alerts:
        used = set(re.findall(r"freshet_[a-z_]+", rule["expr"]))
        assert used and used <= _exported_series(), (rule["alert"], used - _exported_series())
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["rules.yml"]
    (service,) = [compose()["services"]["prometheus"]]
    assert "./prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in service["volumes"]


def test_promtool_checks_and_unit_tests_the_alerts(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool not installed (apt-get install prometheus); alert rules not run"
        print(reason)
        pytest.skip(reason)
    operator = yaml.safe_load(PROMETHEUS_RULE.read_text())
    extracted = tmp_path / "prometheusrule-groups.yml"
    extracted.write_text(yaml.safe_dump({"groups": operator["spec"]["groups"]}))
    for args in (
        ["check", "rules", str(RULES), str(extracted)],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml")],
    ):
        done = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=DEPLOY / "prometheus",
    )
    assert "SUCCESS" in done.stdout + done.stderr


def test_service_monitors_carry_the_label_kube_prometheus_stack_selects() -> None:
    docs = list(
        yaml.safe_load_all(
            (K8S / "overlays" / "servicemonitor" / "servicemonitor.yaml").read_text()
        )
    )
    assert {d["metadata"]["name"] for d in docs} == {"freshet-trainer", "freshet-replica"}
    for doc in docs:
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_queries_only_exported_series() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "freshet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"freshet_[a-z_]+", e)}
    assert used <= _exported_series(), used - _exported_series()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "throughput",
        "auc",
        "hit ratio",
        "rows per tier",
        "checkpoint",
        "publish",
        "lag",
        "dead letters",
        "freshness",
        "latency",
    ):
        assert topic in titles, topic
    # the data source is a dashboard variable, so an imported dashboard finds any Prometheus
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    refs = [p["datasource"] for p in dashboard["panels"]]
    refs += [t["datasource"] for p in dashboard["panels"] for t in p["targets"]]
    assert {(r["type"], r["uid"]) for r in refs} == {("prometheus", "${datasource}")}
    assert variable["current"]["value"] == "prometheus"  # compose's provisioned one
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "prometheus"


def test_dockerfile_builds_the_cli_image() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") == 1
    assert "FROM python:3.11-slim" in text
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "RUN pip install ." in text
    assert 'ENTRYPOINT ["freshet"]' in text
    exposed = re.search(r"^EXPOSE (.+)$", text, re.M)
    assert exposed is not None
    assert set(exposed.group(1).split()) == {str(TRAINER_PORT), str(REPLICA_PORT)}
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_production_replicas_read_the_delta_topic_with_the_overlays_security(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production overlay's FRESHET_* literals configure ``serve.security`` (issue 19.2)."""
    overlay = K8S / "overlays" / "production"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    (env,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "freshet-env"]
    for literal in env["literals"]:
        key, value = literal.split("=", 1)
        if key.startswith("FRESHET_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("KAFKA_PASSWORD", "from-the-secret")
    serve = ServeFile.from_yaml(REPO / "configs" / "fraud.yaml").serve
    assert serve.client_config() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "freshet",
        "sasl_plain_password": "from-the-secret",
        "ssl_cafile": "/etc/freshet-tls/ca.crt",
    }
    # the replica pods get the password variable and the CA mount the options name
    credentials = [
        p["target"]["name"]
        for p in kustomization["patches"]
        if p["path"] == "kafka-credentials.yaml"
    ]
    assert "freshet-replica" in credentials
