"""Secrets come from the environment or a file and never reach a log line or a repr."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.job import SecurityConfig
from pipeline.publishing.chunks import Signer
from pipeline.runtime.logging import setup_logging
from pipeline.runtime.secrets import SecretError, read_secret
from pipeline.source.kafka import SourceConfig


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger as ``freshet`` sets it up, writing into a buffer (restored after)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("kafka").level)
    setup_logging("text", logging.DEBUG)
    buf = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buf)
    yield buf
    root.handlers[:], level, kafka_level = saved
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)


def test_password_from_env_or_file_and_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_KAFKA_PW", "  env-password-1  ")
    cfg = SecurityConfig(security_protocol="SASL_SSL", sasl_password_env="T_KAFKA_PW")
    assert cfg.client_config()["sasl_plain_password"] == "env-password-1"
    (tmp_path / "pw").write_text("file-password-2\n")
    cfg = SecurityConfig(security_protocol="SASL_SSL", sasl_password_file=str(tmp_path / "pw"))
    assert cfg.client_config()["sasl_plain_password"] == "file-password-2"
    with pytest.raises(ValueError, match="not both"):
        SecurityConfig(sasl_password_env="T_KAFKA_PW", sasl_password_file=str(tmp_path / "pw"))
    with pytest.raises(SecretError, match=r"\$T_UNSET_PW: the variable is unset"):
        SecurityConfig(sasl_password_env="T_UNSET_PW").client_config()
    with pytest.raises(SecretError, match="missing: cannot read it"):
        SecurityConfig(sasl_password_file=str(tmp_path / "missing")).client_config()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="the file is empty"):
        read_secret("x", path=tmp_path / "empty")
    # the YAML itself has no field for a password value
    with pytest.raises(ValueError, match="sasl_plain_password"):
        SecurityConfig.model_validate({"sasl_plain_password": "inline"})


def test_secrets_are_masked_in_every_log_record(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("T_KAFKA_PW2", "s3cret-kafka-pw")
    monkeypatch.setenv("T_DELTA_KEY", "s3cret-delta-key")
    config = SecurityConfig(sasl_password_env="T_KAFKA_PW2").client_config()
    Signer.load(env="T_DELTA_KEY")
    (tmp_path / "k").write_text("s3cret-file-key")
    Signer.load(path=tmp_path / "k")
    log = logging.getLogger("kafka.conn")  # a third-party logger, at WARNING
    log.warning("connecting with %s", config)
    logging.getLogger("pipeline").info("key is s3cret-delta-key, file s3cret-file-key")
    try:
        raise RuntimeError("auth failed for s3cret-kafka-pw")
    except RuntimeError:
        logging.getLogger("pipeline").exception("boom")
    out = captured.getvalue()
    for secret in ("s3cret-kafka-pw", "s3cret-delta-key", "s3cret-file-key"):
        assert secret not in out
    assert out.count("***") == 5  # 2 messages with 3 secrets, the traceback quotes it twice
    assert "auth failed for ***" in out


def test_source_config_repr_hides_the_client_config() -> None:
    cfg = SourceConfig(
        bootstrap_servers="k:9092",
        topics=("t",),
        client_config={"security_protocol": "SASL_SSL", "sasl_plain_password": "pw-in-repr"},
    )
    assert "pw-in-repr" not in repr(cfg)
    assert cfg.client_config["sasl_plain_password"] == "pw-in-repr"
    assert "hidden key" in repr(Signer(b"k"))
