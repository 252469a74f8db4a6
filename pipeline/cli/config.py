"""``freshet config``: validate job YAML files, print their JSON schema.

Examples::

    freshet config validate configs/fraud.yaml configs/ctr.yaml
    freshet config validate --show configs/fraud.yaml     # also print the resolved config
    freshet config validate --model serve configs/fraud.yaml  # as `freshet serve` reads it
    freshet config schema > job.schema.json               # for editors and CI linters

A job file is validated exactly as ``freshet train`` loads it: the YAML, then ``FRESHET_*``
environment overrides on top; ``--model serve`` validates it as ``freshet serve`` reads it.
Each error prints on its own line as ``field.path: message (allowed range ...) [line N]``.

Exit codes: 0 every file is valid, 2 a file is invalid, unreadable or not YAML.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from configs.explain import explain
from configs.schema import relative_to
from pipeline.errors import PipelineError

# config model name -> "module:Class"; every entry validates with ``Class(**yaml_mapping)``
MODELS: dict[str, str] = {
    "job": "configs.job:JobConfig",
    "serve": "configs.serving:ServeFile",
}
ENV_PREFIX = "FRESHET_"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``freshet config``'s subcommands."""
    sub = parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    validate = sub.add_parser("validate", help="validate YAML files (exit 2 if one is invalid)")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML files")
    validate.add_argument(
        "--model", choices=sorted(MODELS), default="job", help="which config the files are"
    )
    validate.add_argument(
        "--show", action="store_true", help="print each valid file resolved (defaults, env)"
    )
    schema = sub.add_parser("schema", help="print the JSON schema of a config")
    schema.add_argument(
        "--model", choices=sorted(MODELS), default="job", help="which config's schema"
    )
    schema.add_argument("--out", type=Path, default=None, help="write here instead of stdout")


def load_model(name: str) -> type[BaseModel]:
    """The config class registered as ``name`` in :data:`MODELS`.

    >>> load_model("job").__name__
    'JobConfig'
    """
    module, _, cls = MODELS[name].partition(":")
    model: type[BaseModel] = getattr(importlib.import_module(module), cls)
    return model


def validate_file(path: Path, model: type[BaseModel]) -> tuple[BaseModel | None, list[str]]:
    """Validate one file: ``(config, [])`` if valid, else ``(None, [error line, ...])``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, [f"cannot read the file: {err}"]
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" [line {mark.line + 1}, column {mark.column + 1}]" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        return None, [f"not valid YAML: {problem}{where}"]
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else type(raw).__name__
        return None, [f"the top level must be a mapping of sections, got {kind}"]
    bad_keys = [k for k in raw if not isinstance(k, str)]
    if bad_keys:
        return None, [f"top-level keys must be strings, got {bad_keys!r}"]
    if "schema" in raw:  # a schema file named relative to the job file
        raw = relative_to(raw, path)
    try:
        return model(**raw), []
    except ValidationError as err:
        return None, [str(p) for p in explain(err, model, text)]
    except SettingsError as err:  # an environment override that is not valid JSON
        return None, [_settings_problem(err)]


def _settings_problem(err: SettingsError) -> str:
    """One line for pydantic-settings' complaint about a ``FRESHET_*`` variable."""
    text = str(err)
    field = text.split('"')[1] if text.count('"') >= 2 else "?"
    names = [k for k in _env_overrides() if k.lower().startswith(f"{ENV_PREFIX}{field}".lower())]
    shown = ", ".join(names) or f"{ENV_PREFIX}{field.upper()}*"
    return f"environment override {shown}: not valid JSON for section {field!r}"


def secret_problems(config: BaseModel) -> list[str]:
    """The secrets a job needs at start that cannot be read now (one line each).

    The Kafka SASL password and the delta signing key are read here, as ``freshet train``
    will read them, so a missing file or an unset variable is a config error, not a crash.
    """
    out: list[str] = []
    source = getattr(config, "source", None)
    if source is not None:
        try:
            source.security.client_config()
        except PipelineError as err:
            out.append(f"source.security: {err}")
    for section in ("publish", "serve"):
        value = getattr(config, section, None)
        signing = getattr(value, "signing", None)
        if signing is None:
            continue
        try:
            signing.signer()
        except PipelineError as err:
            out.append(f"{section}.signing: {err}")
    return out


class ConfigFileError(PipelineError, ValueError):
    """A job file that cannot be used: its problems, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        more = f" (and {len(problems) - 1} more: freshet config validate {path})"
        super().__init__(f"{path}: {problems[0]}" + (more if len(problems) > 1 else ""))


def load_job(path: Path | str, *, secrets: bool = True) -> Any:
    """The valid :class:`configs.job.JobConfig` of ``path`` (environment overrides on top).

    Raises :class:`ConfigFileError` with one line per problem: unreadable file, YAML that
    does not parse (or holds python tags), an invalid value (with its YAML line), an override
    that is not JSON, and with ``secrets`` a secret that cannot be read.
    """
    path = Path(path)
    config, problems = validate_file(path, load_model("job"))
    if config is not None and secrets:
        problems = secret_problems(config)
    if problems or config is None:
        raise ConfigFileError(path, problems or ["invalid"])
    return config


def _env_overrides() -> list[str]:
    return sorted(k for k in os.environ if k.startswith(ENV_PREFIX))


def _validate(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    overrides = _env_overrides()
    failed = 0
    for path in args.files:
        config, problems = validate_file(path, model)
        if config is None:
            failed += 1
            noun = "error" if len(problems) == 1 else "errors"
            print(f"{path}: invalid {args.model} config, {len(problems)} {noun}:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            continue
        print(f"{path}: valid {args.model} config")
        if args.show:
            print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
    if failed and overrides:
        print(f"(environment overrides applied: {', '.join(overrides)})", file=sys.stderr)
    return 2 if failed else 0


def _schema(args: argparse.Namespace) -> int:
    schema: dict[str, Any] = load_model(args.model).model_json_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote the {args.model} schema to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``freshet config validate`` or ``freshet config schema``."""
    if args.config_command == "validate":
        return _validate(args)
    return _schema(args)
