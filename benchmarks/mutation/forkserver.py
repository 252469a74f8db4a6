"""A pre-fork pytest server for mutation testing (issue 17), with its client.

mutmut 2 runs its ``--runner`` command once per mutant, in a subprocess, after writing the
mutant to disk. A plain ``python -m pytest`` spends most of its time importing torch; on a loaded
2-core host that is 10+ s per mutant. Here a server imports the third-party modules once (torch,
numpy, rocksdict, pytest, ...) and none of the project's, starts no thread, and forks a child per
request: the child imports ``embedding_store``/``operators``/``pipeline`` fresh from disk (no
bytecode is read or written, so a mutant written in the same second as the last is still seen)
and runs ``pytest.main``. The fork happens before any store thread exists, which is what broke
mutmut 3's fork-per-mutant (see benchmarks/results/mutation/REPORT.md).

    python benchmarks/mutation/forkserver.py serve SOCK &          # once, PYTHONPATH=worktree
    python benchmarks/mutation/forkserver.py run SOCK -- -x -q tests/unit/...   # per mutant

The client exits 0 when the tests pass (the mutant survived) and 1 otherwise: a failing test,
a collection error (a mutant that breaks an import) or a crashed child all kill the mutant.
mutmut 2 counts only exit code 1 as killed, hence the mapping. If the client is killed (mutmut's
timeout), the server kills the child's process group.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

PROJECT_PACKAGES = ("embedding_store", "operators", "pipeline", "configs", "benchmarks", "tests")
PRELOAD = (
    "numpy",
    "torch",
    "rocksdict",
    "pydantic",
    "yaml",
    "hypothesis",
    "pytest",
    "_pytest.python",
    "_pytest.assertion.rewrite",
    "_pytest.capture",
    "_pytest.fixtures",
)


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    leaked = [m for m in sys.modules if m.split(".")[0] in PROJECT_PACKAGES]
    if leaked:
        raise SystemExit(f"forkserver: project modules imported before fork: {leaked[:5]}")
    tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if tasks != 1:
        raise SystemExit(f"forkserver: {tasks} threads before fork; forked children could hang")


def _child(args: list[str], cwd: str, log: str) -> None:
    os.setpgid(0, 0)
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.dont_write_bytecode = True
    code = 3
    try:
        import pytest

        code = int(pytest.main(args))
    except BaseException:  # a mutant can make anything raise; it is killed either way
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve_one(conn: socket.socket, log: str) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(list(request["args"]), str(request["cwd"]), log)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1, socket.MSG_PEEK):
            # the client is gone (mutmut's timeout killed it): stop the mutant's run
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return
    try:
        conn.sendall(f"{code}\n".encode())
    except OSError:
        pass


def serve(path: str) -> None:
    """Preload, then answer requests one at a time until killed."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.dont_write_bytecode = True
    _preload()
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    log = path + ".log"
    print(f"forkserver: ready on {path} (last run's output in {log})", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            _serve_one(conn, log)


def run(path: str, args: list[str]) -> int:
    """Ask the server for one pytest run; 0 if it passed, 1 if anything else."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(600):
        try:
            client.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.1)
    client.sendall((json.dumps({"args": args, "cwd": os.getcwd()}) + "\n").encode())
    reply = b""
    while chunk := client.recv(64):
        reply += chunk
    code = int(reply.strip() or b"3")
    if code != 0:
        sys.stdout.write(f"pytest exit {code}\n")
    return 0 if code == 0 else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1])
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        rest = argv[2:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        return run(argv[1], rest)
    sys.stderr.write("usage: forkserver.py serve SOCK | run SOCK -- PYTEST_ARGS...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
