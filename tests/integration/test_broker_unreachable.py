"""An unreachable broker: one clear line and exit code 4 after a bounded wait, no traceback.

Regression (issue 21 #8): ``freshet train`` against a closed port printed a minute of client
retries and then a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import BROKER_UNREACHABLE
from pipeline.errors import BrokerUnreachableError
from pipeline.source.kafka import Assignment, KafkaSource, SourceConfig
from pipeline.source.process import ProcessSource

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_freshet_train_against_a_closed_port_exits_4_with_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "FRESHET_SOURCE__BOOTSTRAP_SERVERS": f'["127.0.0.1:{port}"]',
        "FRESHET_SOURCE__BROKER_WAIT_S": "1.5",
        "FRESHET_STORE__PATH": str(tmp_path / "store"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "train", "--config", "configs/ctr.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == BROKER_UNREACHABLE == 4, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"freshet train: cannot reach the Kafka broker at 127.0.0.1:{port} within 1.5 s "
        "(Connection refused); check source.bootstrap_servers and that the broker runs"
    )
    assert "kafka.net" not in done.stderr  # no client was built: none retried


@pytest.mark.parametrize("source_type", [KafkaSource, ProcessSource])
def test_a_source_raises_broker_unreachable(source_type: type[KafkaSource | ProcessSource]) -> None:
    port = _closed_port()
    config = SourceConfig(
        bootstrap_servers=f"127.0.0.1:{port}",
        topics=("t",),
        group_id=None,
        assignment=Assignment.MANUAL,
        broker_wait_s=0.5,
    )
    source = source_type(config)
    with pytest.raises(BrokerUnreachableError, match=rf"127\.0\.0\.1:{port} within 0\.5 s"):
        source.start()
    assert source.state.value == "closed"
