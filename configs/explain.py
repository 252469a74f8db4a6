"""Explain a config's validation errors: one line per error, naming the field and its bounds.

Pydantic says *what* is wrong (``Input should be less than or equal to 1024``); this module
adds *where* and *what would be right*, by walking the model along each error's location::

    store.num_shards: Input should be less than or equal to 1024, got 5000
        (allowed range: 1 <= num_shards <= 1024) [line 17]
    source.topicc: unknown key 'topicc' (did you mean 'topic'?) [line 10]

Discriminator tags that pydantic puts in a location (``features.sparse.0.categorical.tabel``)
are dropped, and list indexes print as ``[0]``: ``features.sparse[0].tabel``.

>>> from pydantic import BaseModel, ConfigDict, Field, ValidationError
>>> class Store(BaseModel):
...     model_config = ConfigDict(extra="forbid")
...     num_shards: int = Field(default=4, ge=1, le=64)
>>> try:
...     Store.model_validate({"num_shard": 4, "num_shards": 0})
... except ValidationError as err:
...     for problem in explain(err, Store):
...         print(problem)
num_shards: Input should be greater than or equal to 1, got 0 (allowed range: 1 <= num_shards <= 64)
num_shard: unknown key 'num_shard' (did you mean 'num_shards'?)
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

Loc = tuple[int | str, ...]

_MAX_SHOWN_KEYS = 12


@dataclass(frozen=True)
class ConfigProblem:
    """One validation error, located and explained."""

    path: str
    message: str
    allowed: str | None = None
    line: int | None = None

    def describe(self) -> str:
        """``path: message (allowed ...)``, without the YAML line."""
        text = f"{self.path or '(top level)'}: {self.message}"
        return f"{text} ({self.allowed})" if self.allowed else text

    def __str__(self) -> str:
        """``path: message (allowed ...) [line N]``."""
        text = self.describe()
        return f"{text} [line {self.line}]" if self.line is not None else text


@dataclass
class _Where:
    """Where a location led in the model: its printed path, field and enclosing model."""

    parts: list[str]
    field: FieldInfo | None = None
    name: str | None = None
    parent: type[BaseModel] | None = None
    known: bool = True


def explain(
    err: ValidationError, model: type[BaseModel], source: str | None = None
) -> list[ConfigProblem]:
    """One :class:`ConfigProblem` per error of ``err``, raised validating ``model``.

    ``source`` is the YAML text that was validated; when given, each problem carries the line
    of the offending key.
    """
    root = _compose(source) if source is not None else None
    out = []
    for e in err.errors():
        loc: Loc = tuple(e["loc"])
        ctx = e.get("ctx") or {}
        if e["type"] == "schema_mismatch" and isinstance(ctx.get("at"), str):
            # raised by a whole-config check; its own location names the offending key
            loc = tuple(int(p) if p.isdigit() else p for p in ctx["at"].split("."))
            where = _walk(model, loc)
            path = "".join(
                p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(where.parts)
            )
            out.append(ConfigProblem(path, str(ctx["message"]), None, _line_of(root, loc)))
            continue
        where = _walk(model, loc)
        path = "".join(
            p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(where.parts)
        )
        message, allowed = _message(e, where)
        out.append(ConfigProblem(path, message, allowed, _line_of(root, loc)))
    return out


def _message(e: Any, where: _Where) -> tuple[str, str | None]:
    kind = e["type"]
    if kind == "extra_forbidden":
        key = where.name or "?"
        message = f"unknown key {key!r}"
        if where.parent is not None:
            names = list(where.parent.model_fields)
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            if close:
                return f"{message} (did you mean {close[0]!r}?)", None
            shown = ", ".join(names[:_MAX_SHOWN_KEYS]) + (
                ", ..." if len(names) > _MAX_SHOWN_KEYS else ""
            )
            return message, f"allowed keys: {shown}"
        return message, None
    if kind == "missing":
        described = where.field.description if where.field is not None else None
        return "required field missing" + (f" ({described})" if described else ""), None
    message = str(e["msg"])
    if "input" in e and _scalar(e["input"]):
        message += f", got {e['input']!r}"
    return message, _allowed(where)


def _scalar(value: object) -> bool:
    return isinstance(value, int | float | str | bool) and len(repr(value)) <= 60


def _allowed(where: _Where) -> str | None:
    if where.field is None:
        return None
    name = where.name or "value"
    lower: tuple[str, object] | None = None  # (operator read left to right, bound)
    upper: tuple[str, object] | None = None
    min_len: int | None = None
    max_len: int | None = None
    for c in _constraints(where.field):
        if isinstance(c, at.Ge):
            lower = ("<=", c.ge)
        elif isinstance(c, at.Gt):
            lower = ("<", c.gt)
        elif isinstance(c, at.Le):
            upper = ("<=", c.le)
        elif isinstance(c, at.Lt):
            upper = ("<", c.lt)
        elif isinstance(c, at.MinLen):
            min_len = c.min_length
        elif isinstance(c, at.MaxLen):
            max_len = c.max_length
    if lower and upper:
        return f"allowed range: {lower[1]} {lower[0]} {name} {upper[0]} {upper[1]}"
    if lower:
        return f"allowed range: {name} {'>=' if lower[0] == '<=' else '>'} {lower[1]}"
    if upper:
        return f"allowed range: {name} {upper[0]} {upper[1]}"
    if min_len is not None or max_len is not None:
        most = max_len if max_len is not None else "any"
        return f"allowed length: {min_len or 0} to {most}"
    return None


def _constraints(field: FieldInfo) -> list[Any]:
    found = list(field.metadata)
    for extra in _annotated_metadata(field.annotation):
        found.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return found


def _annotated_metadata(tp: Any) -> list[Any]:
    if get_origin(tp) is Annotated:
        return list(get_args(tp)[1:])
    return []


def _strip(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> X, ``X | None`` -> X (when a single type is left)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _union_member(tp: Any, part: str) -> tuple[type[BaseModel], bool] | None:
    """The model of a union that ``part`` selects: ``(model, part_is_a_tag)``."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in (_model(_strip(a)) for a in get_args(tp)) if m is not None]
    for m in members:  # a discriminator tag: a Literal value of one member
        for f in m.model_fields.values():
            if get_origin(f.annotation) is Literal and part in get_args(f.annotation):
                return m, True
    for m in members:
        if part in m.model_fields:
            return m, False
    return None


def _walk(model: type[BaseModel], loc: Loc) -> _Where:
    where = _Where(parts=[])
    tp: Any = model
    for part in loc:
        if not where.known:
            where.parts.append(f"[{part}]" if isinstance(part, int) else str(part))
            continue
        tp = _strip(tp)
        if isinstance(part, int):
            where.parts.append(f"[{part}]")
            args = get_args(tp)
            origin = get_origin(tp)
            if origin is tuple and args and args[-1] is not Ellipsis and part < len(args):
                tp = args[part]
            elif origin in (list, tuple, set, frozenset) and args:
                tp = args[0]
            else:
                where.known = False
                continue
            where.field = FieldInfo.from_annotation(tp) if get_origin(tp) is Annotated else None
            continue
        member = _union_member(tp, part)
        if member is not None:
            tp, is_tag = member
            if is_tag:
                continue
        where.parts.append(part)
        cls = _model(tp)
        if cls is None or part not in cls.model_fields:
            where.parent, where.name, where.field, where.known = cls, part, None, False
            continue
        where.parent, where.name = cls, part
        where.field = cls.model_fields[part]
        tp = where.field.annotation
    return where


def _compose(source: str) -> yaml.Node | None:
    try:
        return yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML key at ``loc``, or of its deepest enclosing key in the file.

    Discriminator tags in ``loc`` (values, not keys) are skipped.
    """
    if node is None:
        return None
    mark = node.start_mark
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    mark, node = key.start_mark, value
                    break
            else:
                if part in _mapping_values(node):  # a discriminator tag: stay here
                    continue
                break  # not in the file (a missing key, or set by the environment)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return int(mark.line) + 1


def _mapping_values(node: yaml.MappingNode) -> set[str]:
    return {v.value for _, v in node.value if isinstance(v, yaml.ScalarNode)}
