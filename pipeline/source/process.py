"""A Kafka source whose polling and decoding run in a process of their own.

:class:`ProcessSource` is a drop-in for :class:`~pipeline.source.kafka.KafkaSource` (same life
cycle, batches, snapshot, seek, commit and dead letters) that runs the unchanged
``KafkaSource`` in a child process (``python -m pipeline.source.worker``). kafka-python's
record parsing, the validation of every event and the hashing of the string categories
(``SourceConfig.hash_fields``; the featurizer only salts the hashes) then hold the child's
interpreter lock, not the trainer's, so featurisation and training no longer wait for them.

::

    trainer process                                      source process
    ┌──────────────────────────────────────┐  stdin     ┌──────────────────────────────┐
    │ ProcessSource                        │ ─────────► │ command thread: took,        │
    │   next_batch ─► "took" (a credit)    │  frames    │   mark_trained, commit, close│
    │   mark_trained ─► snapshot + forward │            │                              │
    │   commit ─► waits for the reply      │  stdout    │ KafkaSource (polls ahead,    │
    │ reader thread ◄──────────────────────│ ◄───────── │   validates, dead letters)   │
    │   buffer [b7 b8 ...] (events as      │  batches   │ main thread: batch ─► columns│
    │   ColumnarEvents, decoded lazily)    │  as columns│   (queue_batches in flight)  │
    │ stderr thread ◄── JSON log lines ────│ ◄───────── │ log                          │
    └──────────────────────────────────────┘  stderr    └──────────────────────────────┘

No pickle and nothing executable crosses: frames are JSON headers and raw arrays
(:mod:`pipeline.source.wire`). The configuration, security options included, goes in the
first frame on stdin, never on the command line. The child runs in its own session, so a
terminal's Ctrl-C reaches the trainer only, which then closes the source.

Differences from ``KafkaSource``: batch events are
:class:`~pipeline.events.columnar.ColumnarEvents` (what the featurizer reads; index one to get a
dict); up to ``queue_batches + 3`` batches are read ahead (this buffer, the child's two and
the one it is encoding); ``dead_letters`` and ``events_read`` follow the child's counts as its
frames arrive; ``on_batch_ready`` callbacks run on the reader thread. A child that exits
unasked makes :meth:`ProcessSource.next_batch` raise :class:`~pipeline.errors.SourceError`
naming its exit code and last log lines.

>>> from pipeline.source.kafka import SourceConfig
>>> cfg = SourceConfig(bootstrap_servers="127.0.0.1:9092", topics=("clicks",), kind="ctr")
>>> source = ProcessSource(cfg)          # keeps its arguments; start() spawns the child
>>> source.seek({("clicks", 0): 1200})
>>> source.snapshot(), source.state.value
({('clicks', 0): 1200}, 'new')
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from pipeline.errors import ConfigError, PipelineError, SourceError, SourceStateError
from pipeline.source.batch_buffer import BatchBuffer
from pipeline.source.kafka import (
    Offsets,
    PartitionKey,
    SourceBatch,
    SourceConfig,
    SourceState,
    security_options,
)
from pipeline.source.wire import (
    Header,
    config_to_wire,
    decode_batch,
    error_from_wire,
    offsets_from_wire,
    offsets_to_wire,
    read_frame,
    write_frame,
)

__all__ = ["ProcessSource"]

log = logging.getLogger(__name__)

WORKER_MODULE: Final = "pipeline.source.worker"
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[1])
_STDERR_LINES_KEPT: Final = 20


class ProcessSource:
    """Consume one event kind from Kafka in a child process (see the module docstring).

    Life cycle and delivery are those of :class:`~pipeline.source.kafka.KafkaSource`: construct
    (no I/O) -> optional :meth:`seek` -> :meth:`start` -> loop on :meth:`next_batch`, train,
    :meth:`mark_trained` -> :meth:`snapshot` / :meth:`commit` at a checkpoint -> :meth:`close`.
    """

    def __init__(
        self,
        config: SourceConfig,
        *,
        start_timeout_s: float = 120.0,
        python: str | None = None,
    ) -> None:
        self.config = config
        self.start_timeout_s = start_timeout_s
        self._python = python or sys.executable
        self._state = SourceState.NEW
        self._seek: Offsets = {}
        self._trained: Offsets = {}
        self._reported: Offsets = {}  # the child's snapshot: start positions of partitions
        self._lock = threading.Lock()
        self._batches: BatchBuffer[SourceBatch] = BatchBuffer(self._lock)
        self._ready = self._batches.ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stderr_reader: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._started = threading.Event()
        self._start_error: PipelineError | None = None
        self._failure: Header | None = None  # a fatal error frame, or the exit of the child
        self._closing = False
        self._replies: dict[int, Future[None]] = {}
        self._next_id = 0
        self._handed_seq = -1
        self._trained_seq = -1
        self._dead_letters = 0
        self._events_read = 0
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES_KEPT)
        self.worker_stats: dict[str, float] = {}
        """The child's cumulative ``decode_s``, ``encode_s`` and ``cpu_s`` (seconds)."""

    # ----------------------------------------------------------------- state and positions

    @property
    def state(self) -> SourceState:
        """Where the source is in its life cycle."""
        return self._state

    @property
    def pid(self) -> int | None:
        """The source process's id (``None`` before :meth:`start`)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def dead_letters(self) -> int:
        """Messages the child sent to the dead-letter topic so far (as last reported)."""
        return self._dead_letters

    @property
    def events_read(self) -> int:
        """Valid events the child put into batches so far (as last reported)."""
        return self._events_read

    def seek(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Resume from a checkpoint's offsets; call before :meth:`start`."""
        if self._state is not SourceState.NEW:
            raise SourceStateError("seek()", self._state.value)
        for (topic, partition), offset in offsets.items():
            if topic not in self.config.topics:
                raise ConfigError("seek", f"topic {topic!r} is not one of {self.config.topics}")
            if partition < 0 or offset < 0:
                raise ConfigError("seek", f"bad position {offset} in {topic}[{partition}]")
        self._seek = dict(offsets)
        with self._lock:
            self._trained = dict(offsets)

    def snapshot(self) -> Offsets:
        """Next offset per partition after the last batch passed to :meth:`mark_trained`.

        As ``KafkaSource.snapshot``: the seek offsets, where each partition assigned since
        started (reported by the child), and the offsets of every trained batch.
        """
        with self._lock:
            out = dict(self._reported)
            for key, offset in self._trained.items():
                out[key] = max(offset, out.get(key, 0))
            return out

    def mark_trained(self, batch: SourceBatch) -> None:
        """Record that ``batch`` is trained, so :meth:`snapshot` moves past it.

        Batches must be marked in the order :meth:`next_batch` handed them out.
        """
        with self._lock:
            if batch.seq != self._trained_seq + 1 or batch.seq > self._handed_seq:
                raise SourceError(
                    f"mark_trained(batch {batch.seq}): expected batch {self._trained_seq + 1}; "
                    "mark batches once each, in the order next_batch() returned them"
                )
            self._trained_seq = batch.seq
            for key, offset in batch.offsets.items():
                self._trained[key] = max(offset, self._trained.get(key, 0))
        self._command({"op": "mark_trained", "seq": batch.seq})

    # ----------------------------------------------------------------------- life cycle

    def start(self) -> Self:
        """Spawn the source process and wait until its source has started.

        Raises what ``KafkaSource.start`` raised in the child (a
        :class:`~pipeline.errors.SourceError` naming the cause), or a ``SourceError`` if the
        child exits or does not answer within ``start_timeout_s``.
        """
        if self._state is not SourceState.NEW:
            raise SourceStateError("start()", self._state.value)
        security_options(self.config.client_config)
        first: Header = {
            "op": "start",
            "config": config_to_wire(self.config),
            "seek": offsets_to_wire(self._seek),
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [self._python, "-m", WORKER_MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,  # a terminal's Ctrl-C is the trainer's to handle
            )
        except OSError as err:
            self._state = SourceState.CLOSED
            raise SourceError(f"cannot spawn the source process: {err}") from err
        self._state = SourceState.RUNNING
        self._stderr_reader = threading.Thread(
            target=self._forward_stderr, name="source-process-log", daemon=True
        )
        self._stderr_reader.start()
        self._reader = threading.Thread(
            target=self._read_frames, name=f"source-process-{self._proc.pid}", daemon=True
        )
        self._reader.start()
        self._command(first)  # a child that died already is reported by the reader thread
        if not self._started.wait(self.start_timeout_s):
            self.close(timeout_s=1.0)
            raise SourceError(
                f"the source process for {self.config.topics} did not start within "
                f"{self.start_timeout_s} s"
            )
        if self._start_error is not None:
            error = self._start_error
            self.close(timeout_s=5.0)
            raise error
        return self

    open = start

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the source process (killed after ``timeout_s``); buffered batches are dropped."""
        if self._state is SourceState.CLOSED:
            return
        self._state = SourceState.CLOSED
        self._closing = True
        with self._ready:
            self._ready.notify_all()
        proc = self._proc
        if proc is not None:
            self._command({"op": "close"})
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "source process %d did not stop within %.1f s: killing it", proc.pid, timeout_s
                )
                proc.kill()
                proc.wait()
        for thread in (self._reader, self._stderr_reader):
            if thread is not None:
                thread.join(timeout_s)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self._fail_replies(SourceStateError("commit()", "closed"))

    def __enter__(self) -> Self:
        if self._state is SourceState.NEW:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------- trainer side

    def next_batch(self, timeout_s: float = 1.0) -> SourceBatch | None:
        """Take the next batch, or ``None`` if none arrives within ``timeout_s`` seconds.

        Raises :class:`~pipeline.errors.SourceError` once the buffer is empty if the source
        process failed or exited.
        """
        self._check_running("next_batch()")
        batch = self._batches.take(timeout_s, self._check_can_deliver, self._handed)
        if batch is not None:
            self._command({"op": "took", "seq": batch.seq})
        return batch

    def _check_can_deliver(self) -> None:
        """Raise if no more batches can come (lock held, buffer empty)."""
        if self._failure is not None:
            raise error_from_wire(self._failure)
        if self._state is not SourceState.RUNNING:
            raise SourceStateError("next_batch()", self._state.value)

    def _handed(self, batch: SourceBatch) -> None:
        self._handed_seq = batch.seq

    def peek_ahead(self, k: int) -> list[SourceBatch]:
        """Return the next ``k`` buffered batches (fewer if fewer are ready), leaving them there."""
        self._check_running("peek_ahead()")
        return self._batches.peek(k)

    def on_batch_ready(self, callback: Callable[[SourceBatch], None]) -> None:
        """Call ``callback(batch)`` from the reader thread as each batch enters the buffer."""
        self._batches.on_ready(callback)

    def buffered(self) -> int:
        """Count the batches waiting in this process's buffer."""
        return len(self._batches)

    def commit(self, offsets: Mapping[PartitionKey, int], timeout_s: float = 10.0) -> None:
        """Commit ``offsets`` to the consumer group (the child's source does it and answers)."""
        self._check_running("commit()")
        if self.config.group_id is None:
            raise SourceError("commit() needs a group_id")
        with self._lock:
            if self._failure is not None:
                raise SourceError(
                    f"commit(): the source process is not running ({self._failure['message']})"
                )
            ident, self._next_id = self._next_id, self._next_id + 1
            done: Future[None] = Future()
            self._replies[ident] = done
        self._command(
            {
                "op": "commit",
                "id": ident,
                "offsets": offsets_to_wire(offsets),
                "timeout_s": timeout_s,
            }
        )
        try:
            done.result(timeout=timeout_s + 5.0)
        except TimeoutError as err:
            raise SourceError(f"commit of {dict(offsets)} timed out after {timeout_s} s") from err
        finally:
            with self._lock:
                self._replies.pop(ident, None)

    def _check_running(self, what: str) -> None:
        if self._state is not SourceState.RUNNING:
            raise SourceStateError(what, self._state.value)

    # ------------------------------------------------------------------ talking to the child

    def _send(self, header: Header) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        with self._write_lock:
            write_frame(proc.stdin, header)

    def _command(self, header: Header) -> None:
        """Send a command; a dead child is reported by next_batch(), not here."""
        try:
            self._send(header)
        except (OSError, ValueError) as err:  # ValueError: stdin already closed
            log.debug("command %s not sent: %s", header.get("op"), err)

    def _read_frames(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        closed_cleanly = False
        failure: Header | None = None
        read_error: Exception | None = None
        try:
            while True:
                frame = read_frame(proc.stdout)
                if frame is None:
                    break
                header, body = frame
                kind = header.get("type")
                if kind == "closed":
                    closed_cleanly = True
                if "stats" in header:
                    self._take_stats(header["stats"])
                if kind == "batch":
                    self._offer(decode_batch(header, body))
                elif kind == "started":
                    self._started.set()
                elif kind == "reply":
                    self._resolve(int(header["id"]), None)
                elif kind == "error" and "id" in header:
                    self._resolve(int(header["id"]), error_from_wire(header))
                elif kind == "error":
                    failure = header
                    break
        except Exception as err:  # a cut or malformed frame: the child died, or is lost
            read_error = err
        code = self._wait_or_kill(proc, 30.0 if read_error is None else 1.0)
        if failure is None and not self._closing:
            if read_error is not None and code is not None and code >= 0:
                message = f"the source process (pid {proc.pid}) sent a bad frame: {read_error}"
            elif closed_cleanly:
                message = f"the source process (pid {proc.pid}) stopped unasked (code {code})"
            else:
                message = self._exit_message(code)
            failure = {"error": "SourceError", "message": message}
        with self._ready:
            if failure is not None:
                self._failure = failure
                if not self._started.is_set():
                    self._start_error = error_from_wire(failure)
            self._ready.notify_all()
        self._started.set()
        if failure is not None:
            self._fail_replies(error_from_wire(failure))

    @staticmethod
    def _wait_or_kill(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
        """The child's exit code; a child still running after ``timeout_s`` is killed."""
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("source process %d is still running: killing it", proc.pid)
            proc.kill()
            try:
                return proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                return None

    def _exit_message(self, code: int | None) -> str:
        proc = self._proc
        assert proc is not None
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        tail = " | ".join(self._stderr_tail)
        last = f"; its last log lines: {tail}" if tail else ""
        return f"the source process (pid {proc.pid}) for {self.config.topics} {how}{last}"

    def _offer(self, batch: SourceBatch) -> None:
        self._batches.put(batch)

    def _take_stats(self, stats: Mapping[str, Any]) -> None:
        with self._lock:
            for key, offset in offsets_from_wire(stats.get("snapshot", [])).items():
                self._reported[key] = max(offset, self._reported.get(key, 0))
            self._dead_letters = int(stats.get("dead_letters_total", self._dead_letters))
            self._events_read = int(stats.get("events_read", self._events_read))
            self.worker_stats = {
                k: float(stats[k]) for k in ("decode_s", "encode_s", "cpu_s") if k in stats
            }

    def _resolve(self, ident: int, error: BaseException | None) -> None:
        with self._lock:
            done = self._replies.get(ident)
        if done is None or not done.set_running_or_notify_cancel():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def _fail_replies(self, error: BaseException) -> None:
        with self._lock:
            pending = list(self._replies.values())
        for done in pending:
            if done.set_running_or_notify_cancel():
                done.set_exception(error)

    def _forward_stderr(self) -> None:
        """Re-emit the child's JSON log lines through this process's loggers."""
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        prefix = f"[source process {proc.pid}] "
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line:
                continue
            try:
                record = json.loads(line)
                name, level = str(record["logger"]), logging.getLevelName(record["level"])
                message = str(record["message"])
                if record.get("exc"):
                    message += "\n" + str(record["exc"])
            except (ValueError, KeyError, TypeError):  # not a log record: a crash, a print
                name, level, message = __name__, logging.WARNING, line
            if not isinstance(level, int):
                level = logging.WARNING
            if level >= logging.WARNING:
                self._stderr_tail.append(message.splitlines()[-1] if message else message)
            logging.getLogger(name).log(level, "%s%s", prefix, message)

    def __repr__(self) -> str:
        pid = f", pid {self._proc.pid}" if self._proc is not None else ""
        return f"ProcessSource({','.join(self.config.topics)}, {self._state.value}{pid})"
