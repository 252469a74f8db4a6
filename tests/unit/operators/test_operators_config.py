"""The operators: section of a job file, validated at the edge, turned into core objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from configs.operators import OperatorsConfig, load_operators_config
from operators.checkpoint.ops import FullCheckpoint, FullMode, IncrementalCheckpoint
from operators.scheduler import TriggerKind

YAML = """
kind: ctr
source: {topic: events}
operators:
  checkpoint: {dir: CKPT, retention: 2, max_chain_length: 5, full_mode: compact}
  migration: {age: false, scan_limit: 1000}
  schedules:
    - {operator: tier_migration, trigger: {type: interval, seconds: 30}, jitter_seconds: 2}
    - {operator: incremental_checkpoint, trigger: {type: interval, seconds: 60}}
    - {operator: full_checkpoint, trigger: {type: cron, expr: "0 3 * * *"}}
    - {operator: expiry, trigger: {type: interval, seconds: 600}}
    - {operator: metrics_report, trigger: {type: interval, seconds: 15}}
"""


def test_a_job_file_section_builds_the_scheduler(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(YAML.replace("CKPT", str(tmp_path / "ckpt")))
    cfg = load_operators_config(path)
    schedules = cfg.to_schedules()
    assert [s.name for s in schedules] == [
        "tier_migration",
        "incremental_checkpoint",
        "full_checkpoint",
        "expiry",
        "metrics_report",
    ]
    assert (schedules[0].trigger, schedules[0].every, schedules[0].jitter) == (
        TriggerKind.INTERVAL,
        30.0,
        2.0,
    )
    assert (schedules[2].trigger, schedules[2].every) == (TriggerKind.CRON, "0 3 * * *")
    scheduler = cfg.to_scheduler()
    incr = scheduler.operators["incremental_checkpoint"]
    full = scheduler.operators["full_checkpoint"]
    assert isinstance(incr, IncrementalCheckpoint) and incr.max_chain_length == 5
    assert isinstance(full, FullCheckpoint) and full.mode is FullMode.COMPACT
    assert incr.manager is full.manager
    assert incr.manager.retention == 2
    assert not (tmp_path / "ckpt").exists()  # nothing touched the disk yet


def test_a_file_without_the_section_schedules_nothing(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("kind: ctr\n")
    assert load_operators_config(path).to_schedules() == ()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"schedules": [{"operator": "expiry", "trigger": {"type": "interval", "seconds": 0}}]},
            "greater than 0",
        ),
        (
            {"schedules": [{"operator": "expiry", "trigger": {"type": "cron", "expr": "* * *"}}]},
            "at least 9 characters",
        ),
        (
            {
                "schedules": [
                    {"operator": "expiry", "trigger": {"type": "cron", "expr": "61 * * * *"}}
                ]
            },
            "bad crontab",
        ),
        (
            {
                "schedules": [
                    {"operator": "compaction", "trigger": {"type": "interval", "seconds": 1}}
                ]
            },
            "tier_migration",
        ),
        (
            {
                "schedules": [
                    {"operator": "expiry", "trigger": {"type": "interval", "seconds": 1}},
                    {"operator": "expiry", "trigger": {"type": "interval", "seconds": 2}},
                ]
            },
            "scheduled once",
        ),
        (
            {
                "schedules": [
                    {"operator": "full_checkpoint", "trigger": {"type": "interval", "seconds": 1}}
                ]
            },
            "without a checkpoint section",
        ),
        ({"checkpoint": {"dir": "x", "retention": 0}}, "greater than or equal to 1"),
        ({"checkpoint": {"dir": "x", "colour": "red"}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_sections_are_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OperatorsConfig.model_validate(section)


def test_every_field_is_described_and_bounded() -> None:
    from configs import operators as mod

    for model in (
        mod.OperatorsConfig,
        mod.CheckpointConfig,
        mod.MigrationConfig,
        mod.ScheduleConfig,
        mod.IntervalTriggerConfig,
        mod.CronTriggerConfig,
    ):
        assert model.model_config.get("extra") == "forbid", model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
