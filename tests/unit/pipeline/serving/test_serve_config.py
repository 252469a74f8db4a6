"""``freshet serve``'s configuration: ``serve.security`` reaches the replica's Kafka client,
``FRESHET_*`` variables override the file (flags override both), bad input is one line, exit 2.

tansu (the test broker) has ``--authentication``, but its users live in the storage engine and
the tests run it on ``memory://`` (one process), so SASL is checked here at the client options
the replica hands kafka-python.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import serve as serve_cmd
from pipeline.serving.replica import KafkaDeltaSource

FRAUD = str(Path(__file__).parents[4] / "configs" / "fraud.yaml")


def args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    return parser.parse_args(["--config", FRAUD, *extra])


@pytest.fixture
def sasl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "FRESHET_SERVE__SECURITY__SECURITY_PROTOCOL": "SASL_SSL",
        "FRESHET_SERVE__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
        "FRESHET_SERVE__SECURITY__SASL_PLAIN_USERNAME": "freshet",
        "FRESHET_SERVE__SECURITY__SASL_PASSWORD_ENV": "TEST_REPLICA_KAFKA_PASSWORD",
        "FRESHET_SERVE__SECURITY__SSL_CAFILE": "/etc/freshet-tls/ca.crt",
        "TEST_REPLICA_KAFKA_PASSWORD": "replica-secret-1",
        "FRESHET_SERVE__PORT": "8181",
        "FRESHET_SERVE__BOOTSTRAP_SERVERS": '["kafka-0:9094","kafka-1:9094"]',
    }.items():
        monkeypatch.setenv(key, value)


WANT = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "freshet",
    "sasl_plain_password": "replica-secret-1",
    "ssl_cafile": "/etc/freshet-tls/ca.crt",
}


def test_serve_security_and_environment_reach_the_replica(sasl_env: None) -> None:
    replica, serve, kind = serve_cmd.build(args())
    assert kind == "transaction"
    assert serve.port == 8181 and replica.bootstrap == "kafka-0:9094,kafka-1:9094"
    assert replica.client_config == WANT
    # a flag beats the environment
    _, serve, _ = serve_cmd.build(args("--port", "9000", "--bootstrap", "k:1"))
    assert serve.port == 9000 and serve.bootstrap == "k:1"


def test_the_delta_consumer_is_built_with_the_security_options(
    sasl_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What kafka-python receives (the constructor is recorded: no SASL broker to reach)."""
    import pipeline.serving.replica as replica_module

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, **kwargs: Any) -> None:
            seen["consumer"] = kwargs

        def assign(self, partitions: list[Any]) -> None:
            seen["assigned"] = partitions

    def ensure(bootstrap: str, topics: dict[str, int], **kwargs: Any) -> None:
        seen["admin"] = kwargs.get("client_config")

    monkeypatch.setattr(replica_module, "KafkaConsumer", Recorder)
    monkeypatch.setattr(replica_module, "ensure_topics", ensure)
    replica, _, _ = serve_cmd.build(args())
    source = replica._kafka_source()
    assert isinstance(source, KafkaDeltaSource)
    assert seen["admin"] == WANT
    assert {k: seen["consumer"][k] for k in WANT} == WANT
    assert seen["consumer"]["bootstrap_servers"] == "kafka-0:9094,kafka-1:9094"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"FRESHET_SERVE__BOOTSTRAP_SERVERS": "[not json"}, "serve"),
        ({"FRESHET_SERVE__SECURITY__SASL_PASSWORD_ENV": "TEST_UNSET_PASSWORD"}, "TEST_UNSET"),
        ({"FRESHET_SERVE__PORT": "70000"}, "serve.port"),
        ({"FRESHET_SERVE__SECURITY__SECURITY_PROTOCOL": "CARRIER_PIGEON"}, "security_protocol"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    words: str,
) -> None:
    monkeypatch.delenv("TEST_UNSET_PASSWORD", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert serve_cmd.run(args()) == 2
    err = capsys.readouterr().err
    assert err.startswith("freshet serve: configuration error: ") and words in err, err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(("threads", "switch_ms"), [(1, 1.0), (2, 3.0)])
def test_tune_process_sets_the_switch_interval_and_torch_threads(
    threads: int, switch_ms: float
) -> None:
    import sys

    import torch

    from configs.serving import ServeConfig

    before = (sys.getswitchinterval(), torch.get_num_threads())
    try:
        serve_cmd.tune_process(ServeConfig(torch_threads=threads, gil_switch_interval_ms=switch_ms))
        assert torch.get_num_threads() == threads
        assert sys.getswitchinterval() == pytest.approx(switch_ms / 1000)
    finally:
        sys.setswitchinterval(before[0])
        torch.set_num_threads(before[1])


def test_the_replica_defaults_to_one_torch_thread() -> None:
    from configs.serving import ServeConfig

    assert ServeConfig().torch_threads == 1
    assert ServeConfig(torch_threads=None).torch_threads is None
