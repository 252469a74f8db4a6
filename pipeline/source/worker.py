"""The source process: a :class:`~pipeline.source.kafka.KafkaSource` whose batches go out as frames.

Started by :class:`~pipeline.source.process.ProcessSource` as ``python -m
pipeline.source.worker``; it speaks :mod:`pipeline.source.wire` frames on stdin (commands) and
stdout (batches, replies), and writes its log as JSON lines on stderr, which the trainer
process re-emits. Polling, record parsing (:mod:`pipeline.source.records`), the validation
of every event and the hashing of the string fields the featurizer uses as categories
(``SourceConfig.hash_fields``, :class:`~pipeline.features.hashing.StringHasher`) run here, on this
process's own interpreter lock. Events are validated by
:class:`~pipeline.events.fast_decode.FastDecoder` (msgspec, with the pydantic model deciding every
message it does not accept; ``FRESHET_FAST_DECODE=0`` uses the models alone, for A/B runs).
The collector is tuned for this process's many short-lived objects
(:func:`~pipeline.runtime.gc_tuning.tune_gc`).

::

    stdin ──► command thread: start | took | mark_trained | commit | close | end of stream
                                 │ credits            │ source.mark_trained / commit
    KafkaSource ──► main thread: next_batch ──► columns (+ hashes) ──► frame ──► stdout
    (polls ahead,    at most queue_batches frames not yet taken by the trainer
     2 batches)

It stops when told to close or when stdin ends (the trainer died): it closes the source and
exits 0. A fatal source error is sent as an ``error`` frame, then it exits 1.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import IO, Any

from pipeline.events.fast_decode import FastDecoder
from pipeline.events.kinds import decode, event_model
from pipeline.events.schema import EventSchema
from pipeline.features.hashing import StringHasher
from pipeline.runtime.gc_tuning import tune_gc
from pipeline.runtime.logging import JsonFormatter
from pipeline.runtime.secrets import RedactSecrets, register_secret
from pipeline.source.kafka import KafkaSource, SourceBatch, SourceConfig
from pipeline.source.wire import (
    Header,
    WireError,
    config_from_wire,
    encode_batch,
    error_to_wire,
    offsets_from_wire,
    offsets_to_wire,
    read_frame,
    write_frame,
)

log = logging.getLogger(__name__)

_WAIT_S = 0.1
"""Longest wait for a batch or a credit, so a close is served promptly."""
CHILD_QUEUE_BATCHES = 2
"""Batches this process's KafkaSource buffers (the trainer's buffer holds ``queue_batches``)."""


class _TimedDecoder:
    """The source's decoder, its CPU time estimated (the polling thread is its only caller).

    One call in ``SAMPLE`` is timed with the thread's CPU clock (a system call of about a
    microsecond here, too dear to pay per message) and counts ``SAMPLE`` times.
    """

    SAMPLE = 16

    def __init__(self, kind: str, schema: EventSchema | None = None) -> None:
        self._decode: Callable[[bytes], Any] = FastDecoder(kind, schema)
        if os.environ.get("FRESHET_FAST_DECODE") == "0":  # for A/B runs: the models only
            self._decode = functools.partial(decode, kind, schema=schema)
        self._calls = 0
        self.seconds = 0.0

    def __call__(self, payload: bytes) -> Any:
        self._calls += 1
        if self._calls % self.SAMPLE:
            return self._decode(payload)
        t0 = time.thread_time()
        try:
            return self._decode(payload)
        finally:
            self.seconds += (time.thread_time() - t0) * self.SAMPLE


class Worker:
    """One source process's state: the source, the credits and the frames it writes."""

    def __init__(self, source: KafkaSource, out: IO[bytes], decoder: _TimedDecoder) -> None:
        self.source = source
        self._out = out
        self._decoder = decoder
        self._names = tuple(event_model(source.config.kind, source.config.schema).model_fields)
        # the featurizer's string categories: hashed here, off the training thread
        self._hash_fields = frozenset(source.config.hash_fields)
        self._hasher = StringHasher() if self._hash_fields else None
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._stop = False
        self._sent = 0  # batches written
        self._taken = 0  # batches the trainer took (next_batch) so far
        self._handed: dict[int, SourceBatch] = {}
        self._encode_s = 0.0
        self._cpu0 = time.process_time()
        self._last_status: tuple[Any, ...] | None = None

    # -- frames out ------------------------------------------------------------
    def send(self, header: Header, body: list[bytes] | tuple[bytes, ...] = ()) -> None:
        """Write one frame (thread-safe)."""
        with self._write_lock:
            write_frame(self._out, header, body)

    def stats(self) -> Header:
        """Counters and positions the trainer mirrors (sent with every batch and status)."""
        return {
            "snapshot": offsets_to_wire(self.source.snapshot()),
            "dead_letters_total": self.source.dead_letters,
            "events_read": self.source.events_read,
            "decode_s": self._decoder.seconds,
            "encode_s": self._encode_s,
            "cpu_s": time.process_time() - self._cpu0,  # since the source started
        }

    # -- commands in -----------------------------------------------------------
    def serve_commands(self, inp: IO[bytes]) -> None:
        """Read commands until ``close`` or the end of stdin (command thread)."""
        try:
            while True:
                frame = read_frame(inp)
                if frame is None:
                    log.debug("stdin ended: stopping")
                    return
                header, _ = frame
                op = header.get("op")
                if op == "took":
                    with self._cond:
                        self._taken = max(self._taken, int(header["seq"]) + 1)
                        self._cond.notify_all()
                elif op == "mark_trained":
                    self._mark_trained(int(header["seq"]))
                elif op == "commit":
                    self._commit(header)
                elif op == "close":
                    return
                else:
                    log.warning("unknown command %r ignored", op)
        except (OSError, WireError) as err:
            log.warning("reading commands failed (%s): stopping", err)
        finally:
            self.stop()

    def _mark_trained(self, seq: int) -> None:
        batch = self._handed.pop(seq, None)
        if batch is None:
            log.warning("mark_trained(%d): no such batch handed out", seq)
            return
        try:
            self.source.mark_trained(batch)
        except Exception:
            log.exception("mark_trained(%d) failed", seq)

    def _commit(self, header: Header) -> None:
        reply: Header = {"type": "reply", "id": header["id"]}
        try:
            self.source.commit(offsets_from_wire(header["offsets"]), float(header["timeout_s"]))
        except Exception as err:
            reply = {"type": "error", "id": header["id"], **error_to_wire(err)}
        self.send(reply)

    def stop(self) -> None:
        """Make the main loop return."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    # -- the main loop -----------------------------------------------------------
    def run(self, queue_batches: int) -> None:
        """Send batches while the trainer has room for them, until stopped."""
        while True:
            with self._cond:
                while not self._stop and self._sent - self._taken >= queue_batches:
                    self._cond.wait(_WAIT_S)
                if self._stop:
                    return
            batch = self.source.next_batch(timeout_s=_WAIT_S)  # raises if polling failed
            if batch is None:
                self._send_status_if_changed()
                continue
            t0 = time.thread_time()
            header, body = encode_batch(batch, self._names, self._hasher, self._hash_fields)
            self._encode_s += time.thread_time() - t0
            header["stats"] = self.stats()
            self._handed[batch.seq] = batch
            self.send(header, body)
            self._sent += 1

    def _send_status_if_changed(self) -> None:
        stats = self.stats()
        key = (str(stats["snapshot"]), stats["dead_letters_total"], stats["events_read"])
        if key != self._last_status:
            self._last_status = key
            self.send({"type": "status", "stats": stats})


def _claim_stdout() -> IO[bytes]:
    """Keep fd 1 for frames only: a private copy for us, and stray prints go to stderr."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(max(level, logging.WARNING))


def main() -> int:
    """Run one source process (see the module docstring); the exit code."""
    out = _claim_stdout()
    inp = sys.stdin.buffer
    first = read_frame(inp)
    if first is None:
        return 0  # the trainer went away before starting us
    header, _ = first
    _setup_logging(int(header.get("log_level", logging.INFO)))
    if header.get("op") != "start":
        write_frame(out, {"type": "error", "error": "SourceError", "message": "no start frame"})
        return 1
    try:
        config: SourceConfig = config_from_wire(header["config"])
        password = config.client_config.get("sasl_plain_password")
        if isinstance(password, str):
            register_secret(password)
        decoder = _TimedDecoder(config.kind, config.schema)
        # the trainer buffers queue_batches; here a couple keep the pipe fed
        own = replace(config, queue_batches=min(config.queue_batches, CHILD_QUEUE_BATCHES))
        source = KafkaSource(own, decoder=decoder)
        source.seek(offsets_from_wire(header.get("seek", [])))
        source.start()
    except Exception as err:
        write_frame(out, {"type": "error", **error_to_wire(err)})
        return 1
    worker = Worker(source, out, decoder)
    tune_gc()
    code = 0
    try:
        worker.send({"type": "started", "stats": worker.stats()})
        commands = threading.Thread(
            target=worker.serve_commands, args=(inp,), name="source-commands", daemon=True
        )
        commands.start()
        worker.run(config.queue_batches)
    except (BrokenPipeError, ConnectionResetError):
        log.info("the trainer closed the pipe: stopping")
    except Exception as err:
        log.exception("the source process failed")
        code = 1
        try:
            worker.send({"type": "error", **error_to_wire(err)})
        except OSError:
            pass
    finally:
        source.close()
    if code == 0:
        try:
            worker.send({"type": "closed", "stats": worker.stats()})
        except OSError:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
