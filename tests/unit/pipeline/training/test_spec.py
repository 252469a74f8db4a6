"""JobConfig.to_spec(): everything the job needs, as frozen dataclasses, secrets read once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from configs.job import JobConfig
from operators.scheduler import TriggerKind
from pipeline.cli.train import plugins_for
from pipeline.publishing.operator import DeltaPublish
from pipeline.training.exporter import MetricsExporter
from pipeline.training.job_operators import ScheduledOperators
from pipeline.training.spec import JobSpec

REPO = Path(__file__).resolve().parents[4]


def raw(tmp_path: Path) -> dict[str, object]:
    return {
        "kind": "ctr",
        "source": {
            "bootstrap_servers": ["k1:9092", "k2:9092"],
            "topic": "clicks",
            "assignment": "manual",
            "max_events": 77,
            "security": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "u",
                "sasl_password_env": "TEST_SPEC_PASSWORD",
            },
        },
        "store": {"path": str(tmp_path / "s"), "num_shards": 3, "hot_rows": 10},
        "training": {"prefetch_batches": 4, "idle_timeout_s": 2.5},
        "features": {
            "sparse": [{"type": "categorical", "name": "c1", "table": "cat", "field": "c1"}]
        },
        "model": {"type": "logistic"},
        "operators": {
            "checkpoint": {"dir": str(tmp_path / "ck"), "retention": 5, "background": False},
            "schedules": [
                {"operator": "expiry", "trigger": {"type": "interval", "seconds": 9}},
                {"operator": "full_checkpoint", "trigger": {"type": "cron", "expr": "0 3 * * *"}},
            ],
        },
        "publish": {"topic": "d", "snapshot_dir": str(tmp_path / "snaps"), "interval_s": 2.0},
        "metrics_port": 9400,
    }


def test_to_spec_carries_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SPEC_PASSWORD", "hunter2")
    spec = JobConfig.model_validate(raw(tmp_path)).to_spec()
    assert isinstance(spec, JobSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "transaction"  # type: ignore[misc]
    src = spec.source
    assert (src.bootstrap_servers, src.topic, src.assignment, src.max_events) == (
        ("k1:9092", "k2:9092"),
        "clicks",
        "manual",
        77,
    )
    assert src.client_config["sasl_plain_password"] == "hunter2"  # read at conversion
    assert spec.store.num_shards == 3 and spec.store.table_overrides["hot_rows"] == 10
    assert spec.training.prefetch_batches == 4 and spec.training.idle_timeout_s == 2.5
    assert spec.features.tables == ("cat",) and spec.model.kind == "logistic"
    ck = spec.checkpoints()
    assert ck.dir == str(tmp_path / "ck") and ck.retention == 5 and not ck.background
    assert not ck.default
    kinds = {s.name: s.trigger for s in spec.operators.schedules}
    assert kinds == {"expiry": TriggerKind.INTERVAL, "full_checkpoint": TriggerKind.CRON}
    assert spec.publish is not None and spec.publish.settings.interval_s == 2.0
    assert spec.publish.settings.topic == "d"
    assert spec.publish.client_config["sasl_plain_password"] == "hunter2"
    assert spec.metrics is not None and spec.metrics.port_of(1) == 9401
    assert len(spec.config_hash) == 16


def test_a_spec_without_checkpoints_checkpoints_under_its_store(tmp_path: Path) -> None:
    body = raw(tmp_path)
    del body["operators"], body["publish"], body["metrics_port"]
    body["source"] = {"topic": "clicks"}
    spec = JobConfig.model_validate(body).to_spec()
    assert spec.checkpoint is None
    assert spec.checkpoints().dir == str(tmp_path / "s" / "checkpoints")
    assert spec.checkpoints().default
    moved = spec.with_checkpoints(str(tmp_path / "elsewhere"), every_steps=7).checkpoints()
    assert (moved.dir, moved.every_steps, moved.default) == (str(tmp_path / "elsewhere"), 7, False)
    assert plugins_for(spec) == []  # nothing asked for, nothing wired


def test_the_cli_wires_one_plugin_per_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SPEC_PASSWORD", "x")
    plugins = plugins_for(JobConfig.model_validate(raw(tmp_path)).to_spec())
    assert [type(p) for p in plugins] == [ScheduledOperators, DeltaPublish, MetricsExporter]
    exporter = plugins[2]
    assert isinstance(exporter, MetricsExporter)
    assert exporter.operators is plugins[0] and exporter.publisher is plugins[1]


def test_shipped_configs_convert() -> None:
    for name in ("fraud.yaml", "ctr.yaml"):
        spec = JobConfig.from_yaml(REPO / "configs" / name).to_spec()
        assert spec.source.topic and spec.features.tables


@pytest.mark.parametrize(
    ("given", "want"), [({}, 1), ({"torch_threads": 3}, 3), ({"torch_threads": None}, None)]
)
def test_torch_threads_reach_the_spec_and_the_process(
    tmp_path: Path, given: dict[str, object], want: int | None
) -> None:
    import torch

    from pipeline.training.job import TrainJob

    config = raw(tmp_path)
    config["training"] = given
    config["source"] = {"bootstrap_servers": ["k1:9092"], "topic": "clicks"}
    spec = JobConfig.model_validate(config).to_spec()
    assert spec.training.torch_threads == want
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with TrainJob(spec):  # opening applies it; None leaves torch's setting alone
            assert torch.get_num_threads() == (2 if want is None else want)
    finally:
        torch.set_num_threads(before)


def test_torch_threads_must_be_positive(tmp_path: Path) -> None:
    config = raw(tmp_path)
    config["training"] = {"torch_threads": 0}
    with pytest.raises(ValueError, match="torch_threads"):
        JobConfig.model_validate(config)
