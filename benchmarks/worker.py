"""One system in one process, driven window by window: ``python -m benchmarks.worker SPEC.json``.

::

    parent ──stdin──► worker                           worker ──stdout──► parent
                      build system, prepare (untimed)  {"event": "ready", ...}
    "warmup N"        N steps, untimed                 {"event": "warmup", "seconds": ...}
    "window"          steps_per_window steps, timed    {"event": "window", "seconds", "cpu_seconds",
                                                         "off_clock_cpu_seconds", "counters"}
    "finish"                                           {"event": "result", peak RSS, notes, ...}

Every system stays alive, prepared, while the parent runs their windows in turn, so load
from other work on the machine falls on all of them alike. A window ends only once the
system has no work left in flight (``quiesce``: its prefetches have landed), and the CPU a
process burns between its windows is reported as ``off_clock_cpu_seconds``.

The process ends with ``os._exit`` after its result: tearing a 10M-row store down (its final
flush) is not part of any benchmark.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from benchmarks import measure
from benchmarks.workload import Batches, Workload


@dataclass(frozen=True)
class RunSpec:
    """What a worker runs: a system (kind + options) on a workload's batches."""

    label: str
    kind: str
    workload: Workload
    batch_paths: dict[str, str]
    ranked_ids_path: str
    workdir: str
    steps_per_window: int
    options: dict[str, Any] = field(default_factory=dict)
    profile_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain dict."""
        out = asdict(self)
        out["workload"] = self.workload.to_json()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_json`."""
        return cls(**{**raw, "workload": Workload.from_json(raw["workload"])})


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Worker:
    """The worker side of the protocol."""

    def __init__(self, spec: RunSpec, out: IO[str]) -> None:
        from benchmarks.systems import build
        from benchmarks.systems.base import SystemContext

        self.spec = spec
        self.out = out
        self.started = time.time() - measure.process_age_seconds()
        batches = Batches.load(spec.batch_paths)
        ranked = np.load(spec.ranked_ids_path, mmap_mode="r")
        self.ctx = SystemContext(spec.workload, batches, ranked, Path(spec.workdir))
        self.system = build(spec.kind, self.ctx, spec.options)
        self.step = 0
        self.profiler: Any = None
        self.reset_ok = False
        self.last_cpu = cpu_seconds()
        self.thread_cpu0: dict[str, float] = {}
        self.loss = float("nan")
        self.rss = measure.RssSampler().start()  # from the start: the pre-warm's peak counts

    def send(self, msg: dict[str, Any]) -> None:
        """One JSON line to the parent."""
        self.out.write(json.dumps(msg) + "\n")
        self.out.flush()

    def prepare(self) -> None:
        """Build and pre-warm; then reset the peak-RSS mark and start the profiler, if any."""
        rss_start = measure.current_rss_bytes()
        t0 = time.perf_counter()
        self.system.prepare()
        prepare_s = time.perf_counter() - t0
        self.reset_ok = measure.reset_peak_rss()
        self.rss.mark()  # the training phase's own anon / file peaks, as train_peak_rss_bytes
        if self.spec.profile_path:
            from benchmarks.profile import Profiler

            self.profiler = Profiler(self.spec.profile_path)
            self.profiler.start()
        self.last_cpu = cpu_seconds()
        self.thread_cpu0 = measure.cpu_by_thread()
        self.send(
            {
                "event": "ready",
                "prepare_seconds": prepare_s,
                "rss_start_bytes": rss_start,
                "rss_after_prepare_bytes": measure.current_rss_bytes(),
            }
        )

    def _steps(self, n: int) -> dict[str, Any]:
        if self.step + n > len(self.ctx.batches):
            raise ValueError(f"{self.spec.label}: out of batches at step {self.step + n}")
        cpu0 = cpu_seconds()
        off_clock = cpu0 - self.last_cpu
        before = self.system.counters()
        t0 = time.perf_counter()
        for _ in range(n):
            self.loss = self.system.train_step(self.step)
            self.step += 1
        self.system.quiesce()
        seconds = time.perf_counter() - t0
        self.rss.sample()
        after = self.system.counters()
        self.last_cpu = cpu_seconds()
        return {
            "seconds": seconds,
            "cpu_seconds": self.last_cpu - cpu0,
            "off_clock_cpu_seconds": off_clock,
            "steps": n,
            "counters": {k: after[k] - before.get(k, 0.0) for k in after},
        }

    def finish(self) -> dict[str, Any]:
        """Stop the profiler, release what the system holds, report memory and facts."""
        if self.profiler is not None:
            self.profiler.stop()
        train_peak = measure.peak_rss_since_reset() if self.reset_ok else None
        rss_end = measure.current_rss_bytes()
        rss_parts_end = measure.rss_parts()
        rss_peaks = self.rss.stop()
        info = self.system.finish()
        result: dict[str, Any] = {
            "event": "result",
            "peak_rss_bytes": measure.peak_rss_bytes(),
            **rss_peaks,
            "rss_parts_end_bytes": rss_parts_end,
            "train_peak_rss_bytes": train_peak,
            "rss_end_bytes": rss_end,
            "process_seconds": time.time() - self.started,
            "torch_threads": torch.get_num_threads(),
            # after the pre-warm: warm-up, windows and what ran between them (compactions)
            "cpu_by_thread_s": measure.cpu_by_thread_since(self.thread_cpu0),
            "final_loss": self.loss,
            "info": info,
            "notes": self.system.notes,
        }
        if self.spec.profile_path:
            from benchmarks.profile import summarise

            result["profile"] = {"raw": self.spec.profile_path, **summarise(self.spec.profile_path)}
        return result

    def serve(self, commands: IO[str]) -> None:
        """Answer the parent's commands until ``finish``."""
        self.prepare()
        for line in commands:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "warmup":
                self.send({"event": "warmup", **self._steps(int(cmd[1]))})
            elif cmd[0] == "window":
                self.send({"event": "window", **self._steps(self.spec.steps_per_window)})
            elif cmd[0] == "finish":
                self.send(self.finish())
                return
            else:
                raise ValueError(f"unknown command {line!r}")


def main(argv: list[str]) -> int:
    """Entry point: serve the spec in ``argv[0]`` over stdin/stdout."""
    from embedding_store.allocator import tune_allocator

    tune_allocator()  # every system alike, as the freshet command does
    spec = RunSpec.from_json(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    # the protocol owns the real stdout; anything else printed goes to stderr
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    Worker(spec, out).serve(sys.stdin)
    out.flush()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
