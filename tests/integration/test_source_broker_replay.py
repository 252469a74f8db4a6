"""The embedded broker, topic creation, replay and the ``freshet broker`` / ``replay`` commands."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.broker.embedded import EmbeddedBroker, ensure_topics
from pipeline.cli import broker as broker_cmd
from pipeline.cli import replay as replay_cmd
from pipeline.errors import BrokerError, ConfigError
from pipeline.events.replay import keyed_by_field, replay
from tests.integration.conftest import CRITEO_TRAIN, REPO, Read

pytestmark = pytest.mark.integration


def test_broker_life_cycle(kafka_broker: EmbeddedBroker) -> None:
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError, match="start"):
        _ = broker.bootstrap  # port chosen at start()
    with broker:
        assert broker.running
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert broker.bootstrap != kafka_broker.bootstrap
        assert ensure_topics(broker.bootstrap, {"a": 3, "b": 1}) == {"a": 3, "b": 1}
        assert ensure_topics(broker.bootstrap, {"a": 3}) == {"a": 3}  # idempotent
        log_path = broker.log_path
        assert log_path is not None and "tansu" in log_path.read_text()
    assert not broker.running
    assert not log_path.exists()  # a log the broker chose itself goes with it
    broker.stop()  # safe to repeat


def test_a_taken_port_is_reported(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    port = int(kafka_broker.bootstrap.split(":")[1])
    clash = EmbeddedBroker(port=port, log_path=tmp_path / "clash.log", startup_timeout_s=5)
    with pytest.raises(BrokerError, match="in use"):
        clash.start()
    assert not clash.running


def test_replay_at_a_target_rate(
    bootstrap: str, new_topic: Callable[[int], str], read_topic: Callable[..., list[Read]]
) -> None:
    topic = new_topic(2)
    records = [{"customer_id": i % 7, "n": i} for i in range(150)]
    started = time.monotonic()
    sent = replay(
        bootstrap, topic, keyed_by_field(records, "customer_id"), rate=500, progress=False
    )
    elapsed = time.monotonic() - started
    assert sent == 150
    assert elapsed >= 0.25  # 150 events at 500/s take at least 0.3 s (minus the first)
    back = read_topic(topic, 150)
    assert len(back) == 150
    by_key: dict[bytes | None, list[int]] = {}
    for r in back:
        by_key.setdefault(r.key, []).append(json.loads(r.value)["n"])
    for key, ns in by_key.items():
        assert ns == sorted(ns) and all(n % 7 == int(key or b"-1") for n in ns)


def test_replay_limit_and_bad_arguments(bootstrap: str, new_topic: Callable[[int], str]) -> None:
    topic = new_topic(1)
    assert replay(bootstrap, topic, [b"1", b"2", b"3"], limit=2, progress=False) == 2
    with pytest.raises(ConfigError):
        replay(bootstrap, topic, [b"1"], rate=0)


def test_replay_command_with_a_gzipped_file(
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list[Read]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic(1)
    path = tmp_path / "sample.txt.gz"
    lines = CRITEO_TRAIN.read_text().splitlines(keepends=True)[:40]
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    parser = argparse.ArgumentParser()
    replay_cmd.add_arguments(parser)
    args = parser.parse_args(
        ["--bootstrap", bootstrap, "--topic", topic, "--file", str(path), "--key", "index",
         "--limit", "30", "--no-progress"]
    )  # fmt: skip
    assert replay_cmd.run(args) == 0
    assert "30 events sent" in capsys.readouterr().out
    back = read_topic(topic, 30)
    assert [r.key for r in back] == [str(i).encode() for i in range(30)]
    assert json.loads(back[0].value)["c1"] == lines[0].split("\t")[14]

    missing = parser.parse_args(["--bootstrap", bootstrap, "--topic", topic, "--file", "nope.txt"])
    assert replay_cmd.run(missing) == 2


def test_replay_command_with_a_generator(
    bootstrap: str, new_topic: Callable[[int], str], read_topic: Callable[..., list[Read]]
) -> None:
    from pipeline.events.kinds import decode

    topic = new_topic(1)
    parser = argparse.ArgumentParser()
    replay_cmd.add_arguments(parser)
    args = parser.parse_args(
        ["--bootstrap", bootstrap, "--topic", topic, "--generator", "transaction",
         "--limit", "25", "--no-progress"]
    )  # fmt: skip
    assert replay_cmd.run(args) == 0
    back = read_topic(topic, 25)
    assert len(back) == 25
    for r in back:
        decode("transaction", r.value)  # the generator speaks the event schema


@pytest.mark.parametrize("started_with_sigint_ignored", [False, True])
def test_broker_command_runs_until_interrupted(started_with_sigint_ignored: bool) -> None:
    """Ctrl-C stops it, also when started as a shell's background job (SIGINT ignored)."""
    ignore = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    code = (ignore if started_with_sigint_ignored else "") + (
        "import argparse, sys; from pipeline.cli import broker as broker_cmd; "
        "p = argparse.ArgumentParser(); broker_cmd.add_arguments(p); "
        "sys.exit(broker_cmd.run(p.parse_args(['--topic', 'events:2'])))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the bootstrap address, once ready
        host, _, port = line.partition(":")
        assert host == "127.0.0.1" and port.isdigit(), line
        assert ensure_topics(line, {"events": 2}) == {"events": 2}  # created by --topic
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert broker_cmd  # imported for the parser above
