"""Bad job files: ``freshet train`` says what is wrong in one line on stderr and exits 2.

Issue 17 #12 and issue 16: each case ran into a traceback, pydantic's multi-line dump or a
hang before. A real subprocess per case; none of them needs a broker (the config is refused
before anything starts), and a hang shows as the subprocess timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

GOOD = """\
kind: transaction
source: {topic: tx, bootstrap_servers: ["127.0.0.1:1"]}
features:
  label: label
  time_field: timestamp
  sparse:
    - {type: categorical, name: customer, table: tx, field: customer_id, value_type: int}
    - {type: time, name: hour, table: tx, part: hour_of_day}
  dense:
    - {name: amount, field: amount, log1p: true}
model: {type: deepfm, hidden: [8]}
"""

CASES: dict[str, tuple[str, dict[str, str], str]] = {
    # name: (YAML, extra environment, what the line must say)
    "negative hidden layer": (
        GOOD.replace("hidden: [8]", "hidden: [8, -4]"),
        {},
        "model.hidden[1]: Input should be greater than or equal to 1, got -4",
    ),
    "feature on a missing field": (
        GOOD.replace("field: customer_id", "field: customer"),
        {},
        "features.sparse[0].field: no field 'customer' in schema 'transaction'",
    ),
    "label not binary": (
        GOOD.replace("label: label", "label: amount"),
        {},
        "label field 'amount' is not binary",
    ),
    "time part on a non-timestamp": (
        GOOD.replace("part: hour_of_day}", "part: hour_of_day, field: amount}"),
        {},
        "features.sparse[1].field: field 'amount' is a float; a time part needs a timestamp",
    ),
    "hex ids hashed as integers": (
        GOOD.replace(
            "kind: transaction\n",
            "schema:\n  name: s\n  fields:\n"
            "    label: {type: int, ge: 0, le: 1}\n"
            "    timestamp: {type: timestamp, format: iso}\n"
            "    customer_id: {type: string}\n"
            "    amount: {type: float}\n",
        ),
        {},
        "features.sparse[0].value_type: value_type int on string 'customer_id'; use str",
    ),
    "missing signing key file": (
        GOOD + "publish: {signing: {key_file: /nonexistent/freshet.key}}\n",
        {},
        "publish.signing: signing key from /nonexistent/freshet.key: cannot read it",
    ),
    "unset signing key variable": (
        GOOD + "publish: {signing: {key_env: FRESHET_TEST_UNSET_KEY}}\n",
        {},
        "signing key from $FRESHET_TEST_UNSET_KEY: the variable is unset or empty",
    ),
    "missing SASL password file": (
        GOOD.replace(
            "bootstrap_servers",
            "security: {security_protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, "
            "sasl_plain_username: u, sasl_password_file: /nonexistent/pw}, bootstrap_servers",
        ),
        {},
        "source.security: Kafka SASL password from /nonexistent/pw: cannot read it",
    ),
    "bad JSON in an override": (
        GOOD,
        {"FRESHET_SOURCE": "{not json"},
        "environment override FRESHET_SOURCE: not valid JSON for section 'source'",
    ),
    "YAML syntax error": (
        GOOD.replace("model: {type: deepfm", "model: {type: [deepfm"),
        {},
        "not valid YAML",
    ),
    "YAML python tag": (
        GOOD + "extra: !!python/object/apply:os.system ['true']\n",
        {},
        "not valid YAML: could not determine a constructor for the tag",
    ),
    "unknown kind": (
        GOOD.replace("kind: transaction", "kind: clicks"),
        {},
        "kind 'clicks' is not a shipped schema",
    ),
}


def train(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FRESHET_")}
    environ |= {"PYTHONPATH": str(REPO)} | env
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "train", "--config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        env=environ,
        cwd=path.parent,
        timeout=120,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_config_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    text, env, expected = CASES[case]
    path = tmp_path / "job.yaml"
    path.write_text(text)
    done = train(path, env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"freshet train: invalid config {path}: ")
    assert expected in lines[0], lines[0]


def test_the_good_config_passes_the_checks(tmp_path: Path) -> None:
    """The base of every case is valid: only its one change is refused."""
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "config", "validate", str(path)],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
