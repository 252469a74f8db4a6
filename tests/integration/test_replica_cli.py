"""``freshet serve`` as a subprocess: config file, signed deltas, HTTP, clean shutdown."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from configs.serving import ServeFile
from pipeline.cli import serve as serve_cmd
from pipeline.events.generators import generate
from pipeline.publishing.chunks import Signer
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.testing.replicas import (
    TrainingHarness,
    events_of,
    http_call,
    predict_body,
    transaction_specs,
    wait_for_version,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEY = "not-a-real-secret-0123456789"
CLI = (sys.executable, "-m", "pipeline.cli.main", "serve")

CONFIG = """\
kind: transaction
features:
  label: label
  time_field: timestamp
  sparse:
    - {type: categorical, name: customer, table: tx, field: customer_id, value_type: int}
    - {type: categorical, name: terminal, table: tx, field: terminal_id, value_type: int}
    - {type: time, name: hour, table: tx, part: hour_of_day, width: 3}
  aggregates:
    - {name: cust_7d, key: [customer_id], value: amount, window: 7}
  dense:
    - {name: amount, field: amount, log1p: true, standardize: true}
    - {name: cust_mean, aggregate: cust_7d, stat: mean, log1p: true, standardize: true}
    - {name: cust_n, aggregate: cust_7d, stat: count, log1p: true}
model: {type: deepfm, embedding_dim: 4, hidden: [16], bottom: [8]}
serve:
  topic: TOPIC
  snapshot_dir: SNAPSHOTS
  data_dir: DATA
  dram_budget_mb: 1
  resync_poll_s: 0.1
  signing: {key_env: FRESHET_TEST_DELTA_KEY}
"""


def test_serve_command(tmp_path: Path, bootstrap: str, new_topic: Callable[[int], str]) -> None:
    topic = new_topic(1)
    config = tmp_path / "serve.yaml"
    config.write_text(
        CONFIG.replace("TOPIC", topic)
        .replace("SNAPSHOTS", str(tmp_path / "snaps"))
        .replace("DATA", str(tmp_path / "replica"))
    )
    cfg = ServeFile.from_yaml(config)
    assert (cfg.features.to_spec(), cfg.model.to_spec()) == transaction_specs()
    env = {**os.environ, "FRESHET_TEST_DELTA_KEY": KEY}
    proc = subprocess.Popen(
        [*CLI, "--config", str(config), "--port", "0", "--bootstrap", bootstrap],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    harness = TrainingHarness(*transaction_specs(), tmp_path / "trainer").open()
    signer = Signer(KEY.encode())
    publisher = Publisher(
        bootstrap,
        topic,
        tmp_path / "snaps",
        settings=PublisherSettings(topic=topic),
        signer=signer,
    ).start()
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        events = events_of("transaction", list(generate("transaction", 300, seed=4)))
        probe = events[250:260]
        for i in range(3):
            harness.train(events[i * 80 : (i + 1) * 80])
            report = harness.publish(publisher, probe)
            assert report is not None
        assert wait_for_version(url, report.version) == report.version
        status, obj = http_call(url + "/predict", predict_body(probe))
        assert status == 200 and obj["version"] == report.version
        want = harness.recorded[report.version]
        assert np.max(np.abs(np.asarray(obj["scores"]) - want)) <= 1e-6
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        publisher.close()
        harness.close()
    assert proc.stderr is not None
    logs = proc.stderr.read()
    assert KEY not in logs and "signed deltas: required" in logs


def test_serve_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            kind: transaction
            features: {sparse: [{type: categorical, name: c, table: t, field: c}]}
            model: {type: logistic}
            serve: {port: 99999}
            """
        )
    )
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    assert serve_cmd.run(parser.parse_args(["--config", str(bad)])) == 2
    assert "serve.port" in capsys.readouterr().err
    nokey = tmp_path / "nokey.yaml"
    nokey.write_text(
        bad.read_text().replace("{port: 99999}", "{signing: {key_env: NO_SUCH_VAR_X}}")
    )
    assert serve_cmd.run(parser.parse_args(["--config", str(nokey)])) == 2
    assert "$NO_SUCH_VAR_X" in capsys.readouterr().err
    assert serve_cmd.run(parser.parse_args(["--config", str(tmp_path / "absent.yaml")])) == 2
    assert "cannot read" in capsys.readouterr().err
