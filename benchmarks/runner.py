"""Run each system in a fresh subprocess, one after another, and collect its result.

One process per system keeps peak-RSS figures clean (nothing of one system lingers in the
next) and no two systems share the 2 cores at the same time.

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
from pathlib import Path
from typing import Any

from benchmarks.worker import RunSpec

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A system's worker process exited with an error."""

    def __init__(self, label: str, code: int) -> None:
        super().__init__(f"benchmark worker for {label!r} exited with code {code}")
        self.label = label
        self.code = code


def python_env() -> dict[str, str]:
    """The environment of a worker: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_worker(spec: RunSpec, timeout_s: float | None = None, keep: bool = False) -> dict[str, Any]:
    """Run ``spec`` in a subprocess; returns its result. Removes the workdir unless ``keep``."""
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    spec_path.write_text(json.dumps(spec.to_json(), indent=2), encoding="utf-8")
    log.info("running %s ...", spec.label)
    cmd = [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(result_path)]
    try:
        proc = subprocess.run(cmd, env=python_env(), timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise WorkerFailed(spec.label, proc.returncode)
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    log.info("%s: %.0f samples/s", spec.label, result["samples_per_s"])
    return result
