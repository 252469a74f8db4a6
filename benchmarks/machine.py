"""Where and how a benchmark ran: machine, software versions, command, date, git commit.

>>> info = machine_info()
>>> info["cpu_count"] >= 1 and info["ram_bytes"] > 0
True
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name (``lscpu``, else ``/proc/cpuinfo``, else ``platform``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, load, OS and the versions of the libraries that matter."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "ram_bytes": int(psutil.virtual_memory().total),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "pandas": _version("pandas"),
        "rocksdict": _version("rocksdict"),
        "shared_machine": "other work ran on the same 2 cores while measuring; compare ratios "
        "within one run",
    }


def git_info() -> dict[str, Any]:
    """The checkout's commit, whether it had local changes, and which store files did."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    store = [p for p in changed if p.startswith("embedding_store/")]
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(changed),
        "uncommitted_store_files": store,
    }


def command_line() -> str:
    """The command as typed (``freshet bench ...`` when run through the console script)."""
    argv = list(sys.argv) or [""]
    name = Path(argv[0]).name
    head = {"freshet": "freshet", "cli.py": "python -m pipeline.cli.main"}.get(name, argv[0])
    return f"{head} {shlex.join(argv[1:])}".strip()


def run_header(benchmark: str, quick: bool) -> dict[str, Any]:
    """The common head of every result JSON."""
    return {
        "benchmark": benchmark,
        "quick": quick,
        "command": command_line(),
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
    }
