"""Run several systems, each in its own process, and time their windows in turn.

::

    start every worker ─► they prepare at the same time (untimed) ─► all "ready"
    for each segment (a workload phase, e.g. one Zipf exponent):
        every worker: "warmup N"
        window w = 0..W-1: every worker runs one window, the order rotating with w
    every worker: "finish" ─► peak RSS, notes, ... ─► the process exits

One process per system keeps peak-RSS figures apart; only one system trains at a time, and
interleaving the windows spreads the load of other work on the machine over all systems.

>>> python_env()["PYTHONPATH"].split(":")[0] == str(REPO)
True
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import summarise_segment
from benchmarks.worker import RunSpec

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A system's worker process died or answered out of turn."""

    def __init__(self, label: str, detail: str) -> None:
        super().__init__(f"benchmark worker for {label!r}: {detail}")
        self.label = label


@dataclass(frozen=True)
class Timing:
    """Warm-up steps, then ``windows`` timed windows of ``steps_per_window`` steps."""

    warmup: int
    windows: int
    steps_per_window: int

    @property
    def steps(self) -> int:
        """Batches one system trains in one segment."""
        return self.warmup + self.windows * self.steps_per_window


@dataclass(frozen=True)
class Segment:
    """A phase of the run: ``warmup`` untimed steps, then ``windows`` timed windows."""

    name: str
    warmup: int
    windows: int


def python_env() -> dict[str, str]:
    """The environment of a worker: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


class WorkerProcess:
    """The parent's handle on one worker (see :mod:`benchmarks.worker` for the protocol)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.label = spec.label
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Write the spec and start the process (it begins preparing at once)."""
        workdir = Path(self.spec.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(self.spec.to_json(), indent=2), encoding="utf-8")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=python_env(),
        )

    def _ask(self, command: str | None, event: str) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise WorkerFailed(self.label, "not started")
        if command is not None:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise WorkerFailed(self.label, f"exited with code {proc.wait()}")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("event") != event:
            raise WorkerFailed(self.label, f"expected {event!r}, got {msg.get('event')!r}")
        return msg

    def ready(self) -> dict[str, Any]:
        """Wait for the end of prepare."""
        return self._ask(None, "ready")

    def warmup(self, steps: int) -> dict[str, Any]:
        """Run untimed steps."""
        return self._ask(f"warmup {steps}", "warmup")

    def window(self) -> dict[str, Any]:
        """Run one timed window."""
        return self._ask("window", "window")

    def finish(self) -> dict[str, Any]:
        """Collect the final report; the process exits."""
        msg = self._ask("finish", "result")
        assert self._proc is not None
        self._proc.wait(timeout=120)
        return msg

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def run_interleaved(
    specs: list[RunSpec], segments: list[Segment], keep: bool = False
) -> dict[str, dict[str, Any]]:
    """Run ``specs`` side by side; returns per label its prepare, segments and final report."""
    procs = [WorkerProcess(s) for s in specs]
    out: dict[str, dict[str, Any]] = {p.label: {"segments": {}} for p in procs}
    try:
        for p in procs:
            p.start()
        log.info("preparing %s ...", ", ".join(p.label for p in procs))
        for p in procs:
            out[p.label].update(p.ready())
            log.info("%s ready (%.1f s)", p.label, out[p.label]["prepare_seconds"])
        for seg in segments:
            windows: dict[str, list[dict[str, Any]]] = {p.label: [] for p in procs}
            warm = {p.label: p.warmup(seg.warmup) for p in procs}
            for w in range(seg.windows):
                k = w % len(procs)
                for p in procs[k:] + procs[:k]:
                    windows[p.label].append(p.window())
            for p in procs:
                spec = p.spec
                batch = spec.workload.batch * spec.steps_per_window
                summary = summarise_segment(windows[p.label], batch)
                summary.update(warmup_steps=seg.warmup, warmup_seconds=warm[p.label]["seconds"])
                out[p.label]["segments"][seg.name] = summary
                log.info("%s %s: %.0f samples/s", p.label, seg.name, summary["samples_per_s"])
        for p in procs:
            out[p.label].update(p.finish())
    finally:
        for p in procs:
            p.kill()
            if not keep:
                shutil.rmtree(p.spec.workdir, ignore_errors=True)
    return out
