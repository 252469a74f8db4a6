"""The schema: section, and features checked against it with the YAML line named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from configs.job import JobConfig
from pipeline.cli.config import load_model, validate_file

REPO = Path(__file__).resolve().parents[3]

JOB = """\
schema: s.yaml
source: {topic: t}
features:
  label: label
  time_field: ts
  sparse:
    - {type: categorical, name: u, table: t, field: user}
    - {type: time, name: h, table: t, part: hour_of_day}
  dense:
    - {name: p, field: price}
model: {type: logistic}
"""
SCHEMA = """\
name: clicks
fields:
  label: {type: int, ge: 0, le: 1}
  user: {type: string}
  price: {type: float, nullable: true}
  ts: {type: timestamp, unit: ms}
  note: {type: string, required: false}
"""


def check(tmp_path: Path, job: str, schema: str = SCHEMA) -> list[str]:
    (tmp_path / "s.yaml").write_text(schema)
    path = tmp_path / "job.yaml"
    path.write_text(job)
    _, problems = validate_file(path, load_model("job"))
    return problems


def test_a_schema_file_beside_the_job_is_found_and_valid(tmp_path: Path) -> None:
    assert check(tmp_path, JOB) == []
    config = JobConfig.from_yaml(tmp_path / "job.yaml")
    assert config.event_kind == "clicks"
    assert config.features.to_spec().epoch_units == (("ts", "ms"),)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("field: user}", "field: usr}"),
         "features.sparse[0].field: no field 'usr' in schema 'clicks' (did you mean 'user'?) "
         "[line 7]"),
        (("label: label", "label: price"),
         "features.label: label field 'price' is not binary: declare it {type: int, ge: 0, "
         "le: 1} or {type: bool} [line 4]"),
        (("time_field: ts", "time_field: note"),
         "features.time_field: field 'note' is a string; a time field is a timestamp (and 1 "
         "more) [line 5]"),
        (("field: price}", "field: user}"),
         "features.dense[0].field: field 'user' is a string; a dense column reads int or float "
         "or bool [line 10]"),
    ],
)  # fmt: skip
def test_a_feature_the_schema_cannot_feed_names_its_line(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    assert check(tmp_path, JOB.replace(*change)) == [expected]


def test_the_label_must_be_binary_in_the_schema(tmp_path: Path) -> None:
    problems = check(tmp_path, JOB, SCHEMA.replace("ge: 0, le: 1", "ge: 0, le: 5"))
    assert problems == [
        "features.label: label field 'label' is not binary: declare it {type: int, ge: 0, "
        "le: 1} or {type: bool} [line 4]"
    ]


def test_kind_is_a_shorthand_for_the_shipped_schema() -> None:
    by_kind = JobConfig.from_yaml(REPO / "configs" / "ctr.yaml")
    text = (REPO / "configs" / "ctr.yaml").read_text().replace("kind: ctr", "schema: ctr")
    raw_schema = JobConfig.model_validate(yaml.safe_load(text)).schema_spec()
    assert by_kind.schema_spec() == raw_schema
    assert by_kind.event_kind == "ctr"


def test_a_bad_schema_declaration_is_one_line(tmp_path: Path) -> None:
    problems = check(
        tmp_path, JOB, SCHEMA.replace("{type: timestamp, unit: ms}", "{type: timestamp}")
    )
    assert len(problems) == 1
    assert "a timestamp has either format: iso or an epoch unit" in problems[0]
