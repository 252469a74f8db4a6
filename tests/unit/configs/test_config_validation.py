"""Every YAML in configs/ validates; bad keys and values are reported by field and bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from configs.explain import explain
from configs.job import JobConfig
from configs.serving import ServeFile
from pipeline.cli.config import validate_file

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"

# YAML files in configs/ that are not job configs, each with the reason it is skipped here.
NOT_JOB_FILES: dict[str, str] = {}

YAMLS = sorted(p for p in CONFIGS.iterdir() if p.suffix in (".yaml", ".yml"))


def test_configs_dir_has_job_files() -> None:
    assert {"fraud.yaml", "ctr.yaml"} <= {p.name for p in YAMLS}


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_yaml_in_configs_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name in NOT_JOB_FILES:
        pytest.skip(f"{path.name} is not a job config: {NOT_JOB_FILES[path.name]}")
    for key in [k for k in os.environ if k.startswith("FRESHET_")]:
        monkeypatch.delenv(key)
    config = JobConfig.from_yaml(path)
    assert config.kind in ("transaction", "ctr")
    assert validate_file(path, JobConfig) == (config, [])
    # the same file is what `freshet serve --config` reads
    assert validate_file(path, ServeFile) == (ServeFile.from_yaml(path), [])


def _raw() -> dict[str, object]:
    raw = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    assert isinstance(raw, dict)
    return raw


def _problems(raw: dict[str, object]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        JobConfig.model_validate(raw)
    return [str(p) for p in explain(info.value, JobConfig)]


def test_misspelt_key_is_named_with_a_suggestion() -> None:
    raw = _raw()
    raw["source"]["topicc"] = raw["source"].pop("topic")  # type: ignore[index,attr-defined]
    problems = _problems(raw)
    assert "source.topicc: unknown key 'topicc' (did you mean 'topic'?)" in problems
    assert any(p.startswith("source.topic: required field missing") for p in problems)


def test_misspelt_key_inside_a_tagged_list_item() -> None:
    raw = _raw()
    raw["features"]["sparse"][0]["tabel"] = "tx"  # type: ignore[index]
    assert "features.sparse[0].tabel: unknown key 'tabel' (did you mean 'table'?)" in _problems(raw)


def test_misspelt_section_lists_the_sections() -> None:
    raw = _raw()
    raw["trainng"] = raw.pop("training")
    (problem,) = _problems(raw)
    assert problem == "trainng: unknown key 'trainng' (did you mean 'training'?)"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        (
            "store",
            "num_shards",
            5000,
            "store.num_shards: Input should be less than or equal to "
            "1024, got 5000 (allowed range: 1 <= num_shards <= 1024)",
        ),
        (
            "store",
            "lfu_decay",
            0,
            "store.lfu_decay: Input should be greater than 0, got 0 "
            "(allowed range: 0 < lfu_decay <= 1)",
        ),
        (
            "source",
            "max_events",
            0,
            "source.max_events: Input should be greater than or equal "
            "to 1, got 0 (allowed range: 1 <= max_events <= 1000000)",
        ),
        (
            "training",
            "max_events",
            -5,
            "training.max_events: Input should be greater than or "
            "equal to 1, got -5 (allowed range: max_events >= 1)",
        ),
    ],
)
def test_out_of_range_value_names_field_and_bounds(
    section: str, key: str, value: int, expected: str
) -> None:
    raw = _raw()
    raw.setdefault(section, {})[key] = value  # type: ignore[index]
    assert _problems(raw) == [expected]


def test_nested_optimizer_bound() -> None:
    raw = _raw()
    raw["model"]["sparse_optimizer"]["lr"] = -1  # type: ignore[index]
    assert _problems(raw) == [
        "model.sparse_optimizer.lr: Input should be greater than 0, got -1 "
        "(allowed range: 0 < lr <= 100)"
    ]


def test_list_length_bound() -> None:
    raw = _raw()
    raw["source"]["bootstrap_servers"] = []  # type: ignore[index]
    (problem,) = _problems(raw)
    assert problem.startswith("source.bootstrap_servers: List should have at least 1 item")
    assert problem.endswith("(allowed length: 1 to 64)")


def test_problem_carries_the_yaml_line(tmp_path: Path) -> None:
    text = (CONFIGS / "fraud.yaml").read_text().replace("  num_shards: 4", "  num_shards: 0")
    line = text.splitlines().index("  num_shards: 0") + 1
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    config, problems = validate_file(path, JobConfig)
    assert config is None
    assert problems == [
        "store.num_shards: Input should be greater than or equal to 1, got 0 "
        f"(allowed range: 1 <= num_shards <= 1024) [line {line}]"
    ]


def test_yaml_syntax_and_shape_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: ctr\nsource: {topic: [t\n")
    assert validate_file(broken, JobConfig)[1][0].startswith("not valid YAML")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    assert validate_file(scalar, JobConfig)[1] == [
        "the top level must be a mapping of sections, got str"
    ]
    assert validate_file(tmp_path / "absent.yaml", JobConfig)[1][0].startswith("cannot read")


def _freshet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHET_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_cli_exit_codes(tmp_path: Path) -> None:
    good = _freshet("config", "validate", *[str(p) for p in YAMLS if p.name not in NOT_JOB_FILES])
    assert good.returncode == 0, good.stderr
    assert "fraud.yaml: valid job config" in good.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (CONFIGS / "ctr.yaml")
        .read_text()
        .replace("  group_id:", "  group_idd:")
        .replace("num_shards: 4", "num_shards: 2000")
    )
    out = _freshet("config", "validate", str(CONFIGS / "ctr.yaml"), str(bad))
    assert out.returncode == 2
    assert "ctr.yaml: valid job config" in out.stdout
    assert f"{bad}: invalid job config, 2 errors:" in out.stderr
    assert "source.group_idd: unknown key 'group_idd' (did you mean 'group_id'?)" in out.stderr
    assert "store.num_shards: Input should be less than or equal to 1024, got 2000 " in out.stderr
    assert "(allowed range: 1 <= num_shards <= 1024)" in out.stderr

    schema = _freshet("config", "schema", "--out", str(tmp_path / "schema.json"))
    assert schema.returncode == 0, schema.stderr
    text = (tmp_path / "schema.json").read_text()
    assert '"title": "JobConfig"' in text and '"additionalProperties": false' in text


def test_store_sst_layout_reaches_the_store_config() -> None:
    raw = _raw()
    raw.setdefault("store", {})["sst"] = {"block_size": 2048, "bloom_bits_per_key": 0}  # type: ignore[index]
    sst = JobConfig.model_validate(raw).store.rocks_options()["sst"]
    assert (sst.block_size, sst.bloom_bits_per_key, sst.compression) == (2048, 0, "none")
    raw["store"]["sst"] = {"compression": "brotli"}  # type: ignore[index]
    assert any(p.startswith("store.sst.compression:") for p in _problems(raw))


@pytest.mark.parametrize("name", ["ctr.yaml", "fraud.yaml"])
def test_shipped_configs_checkpoint_on_a_schedule_under_their_store(name: str) -> None:
    """Issue 17 #3: the shipped jobs checkpoint on a schedule (the block used to be commented
    out, so a restart re-trained everything); the checkpoints follow the store path, so a job
    (or a test) that moves its store never resumes from another store's checkpoints."""
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    config = JobConfig.model_validate(raw)
    assert config.operators is not None
    names = [s.operator for s in config.operators.schedules]
    assert names == [
        "tier_migration",
        "incremental_checkpoint",
        "full_checkpoint",
        "metrics_report",
    ]
    assert config.operators.checkpoint is not None
    assert config.operators.checkpoint.dir is None
    spec = config.to_spec()
    assert spec.checkpoint is not None
    assert spec.checkpoint.dir == os.path.join(raw["store"]["path"], "checkpoints")
    assert (spec.checkpoint.retention, spec.checkpoint.background) == (3, True)
    moved = config.model_copy(update={"store": config.store.model_copy(update={"path": "/s"})})
    assert moved.to_spec().checkpoints().dir == "/s/checkpoints"
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    deployed = compose["services"]["trainer"]["environment"]["FRESHET_OPERATORS__SCHEDULES"]
    assert raw["operators"]["schedules"] == json.loads(deployed)  # what deploy/ runs


def test_store_staleness_reaches_the_store_config(tmp_path: Path) -> None:
    from embedding_store import StoreConfig, TableConfig

    raw = _raw()
    raw.setdefault("store", {})["staleness"] = 3  # type: ignore[index]
    opts = JobConfig.model_validate(raw).store.rocks_options()
    store = StoreConfig(str(tmp_path), (TableConfig("t", 2),), **opts)
    assert store.staleness == 3
    assert JobConfig.model_validate(_raw()).store.rocks_options()["staleness"] == 0
    raw["store"]["staleness"] = -1  # type: ignore[index]
    assert any(p.startswith("store.staleness:") for p in _problems(raw))
