"""The ``freshet`` command line as a user meets it: version, help, exit codes, option names.

Subprocesses run ``python -m pipeline.cli.main`` from this checkout (PYTHONPATH is inherited).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import COMMANDS, main, parse, version

REPO = Path(__file__).resolve().parents[4]
CLI = (sys.executable, "-m", "pipeline.cli.main")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def test_version_prints_the_distribution_version() -> None:
    done = _run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"freshet {version()}")
    assert version() != "" and version()[0].isdigit()


def test_help_lists_every_command_without_loading_torch_or_pandas() -> None:
    probe = (
        "import sys\n"
        "from pipeline.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'pandas', 'numpy', 'kafka') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', ','.join(heavy) or '-')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip().splitlines()[-1] == "EXIT 0 HEAVY -"
    for name in COMMANDS:
        assert f"    {name} " in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("replay", "--bootstrap-server", "x:9092", "--topic", "t", "--generator", "foo"),
        ("no-such-command",),
        ("--log-level", "loud", "broker"),
        ("replay", "--topic", "t", "--generator", "ctr"),  # no bootstrap server
        ("broker", "--port", "many"),
    ],
)
def test_usage_errors_exit_2_with_a_usage_line(args: tuple[str, ...]) -> None:
    done = _run(*args)
    assert done.returncode == 2
    assert "usage: freshet" in done.stderr
    assert "Traceback" not in done.stderr


def test_kafka_option_names_and_the_old_aliases_parse_alike() -> None:
    new = parse(
        [
            "replay",
            "--bootstrap-server",
            "h:1",
            "--topic",
            "t",
            "--file",
            "f",
            "--max-messages",
            "5",
        ]
    )
    old = parse(["replay", "--bootstrap", "h:1", "--topic", "t", "--file", "f", "--limit", "5"])
    assert (new.bootstrap, new.limit) == (old.bootstrap, old.limit) == ("h:1", 5)
    serve_new = parse(["serve", "--config", "c.yaml", "--bootstrap-server", "h:2,h:3"])
    serve_old = parse(["serve", "--config", "c.yaml", "--bootstrap", "h:2,h:3"])
    assert serve_new.bootstrap == serve_old.bootstrap == "h:2,h:3"


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["replay", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED generator seed (default: 0)" in text
    assert "(default: None)" not in text  # no noise for options without a default
    with pytest.raises(SystemExit):
        parse(["--help"])
    assert "lowest level logged (default: info)" in " ".join(capsys.readouterr().out.split())


def test_log_level_sets_the_root_logger(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        code = main(["--log-level", "error", "config", "validate", str(REPO / "configs/ctr.yaml")])
        assert code == 0
        assert root.level == logging.ERROR
        assert logging.getLogger("kafka").level == logging.ERROR
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
