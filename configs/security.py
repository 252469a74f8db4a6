"""Kafka client security (TLS, SASL), shared by the source, the publisher and the replicas.

The same section appears as ``source.security`` (the trainer's consumer and, since it writes to
the same cluster, its publisher) and ``serve.security`` (a replica's delta consumer)::

    security:
      security_protocol: SASL_SSL
      sasl_mechanism: SCRAM-SHA-512
      sasl_plain_username: freshet
      sasl_password_env: KAFKA_PASSWORD      # or sasl_password_file: /run/secrets/kafka
      ssl_cafile: /etc/freshet-tls/ca.crt

>>> SecurityConfig().client_config()
{'security_protocol': 'PLAINTEXT'}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.runtime.secrets import read_secret


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecurityConfig(_Section):
    """Kafka client security settings, passed through to kafka-python unchanged.

    Secrets come from the environment or a file, never from the YAML itself.
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="kafka-python security_protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = (
        Field(default=None, description="SASL mechanism")
    )
    sasl_plain_username: str | None = Field(default=None, max_length=256, description="user")
    sasl_password_env: str | None = Field(
        default=None, max_length=128, description="environment variable holding the password"
    )
    sasl_password_file: str | None = Field(
        default=None, max_length=4096, description="file holding the password (a mounted secret)"
    )
    ssl_cafile: str | None = Field(default=None, max_length=4096, description="CA bundle path")
    ssl_certfile: str | None = Field(default=None, max_length=4096, description="client cert")
    ssl_keyfile: str | None = Field(default=None, max_length=4096, description="client key")

    def client_config(self) -> dict[str, Any]:
        """The kafka-python keyword arguments (password read from the environment now)."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        for key in (
            "sasl_mechanism",
            "sasl_plain_username",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.sasl_password_env is not None or self.sasl_password_file is not None:
            out["sasl_plain_password"] = read_secret(
                "Kafka SASL password", env=self.sasl_password_env, path=self.sasl_password_file
            )
        return out

    @model_validator(mode="after")
    def _one_password_source(self) -> SecurityConfig:
        if self.sasl_password_env is not None and self.sasl_password_file is not None:
            raise ValueError("give sasl_password_env or sasl_password_file, not both")
        return self
