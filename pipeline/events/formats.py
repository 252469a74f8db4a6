r"""Read event files (Criteo TSV, CSV with a header, JSON lines; ``.gz`` ok) as JSON messages.

::

    format      file                                   one message per
    criteo      label \t I1..I13 \t C1..C26            line  -> a "ctr" event
    fraud-csv   TRANSACTION_ID,TX_DATETIME,...          row   -> a "transaction" event
    csv         any header                              row   -> {column: int|float|str|null}
    tsv         any header, tab-separated               row   -> as csv
    jsonl       one JSON value per line                 line  -> sent verbatim

With a declared schema (:class:`~pipeline.events.schema.EventSchema`) csv and tsv cells are
typed by their field, not guessed: a ``string`` field keeps ``"04258293"`` as text, an ``int``
field parses ``"7"``, ``bool`` reads true/false/1/0, an epoch timestamp a number, a ``list``
a JSON array or ``a|b|c``; an empty cell is null (an optional field's cell is left out, so its
default applies). A cell that does not parse is sent as its text, and the validator
dead-letters the event with the reason.

The format follows the extension unless given: ``.txt``/``.tsv`` criteo, ``.csv`` csv (fraud-csv
when the header has ``TX_FRAUD``), ``.jsonl``/``.ndjson``/``.json`` jsonl; ``.gz`` is stripped
first and the file read through gzip.

>>> detect_format("data/criteo/train.txt.gz").value
'criteo'
>>> csv_value("42"), csv_value("-1.5"), csv_value(""), csv_value("ab")
(42, -1.5, None, 'ab')
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from pipeline.errors import DecodeError, FormatError
from pipeline.events.kinds import CtrEvent, Event, TransactionEvent, encode, to_record
from pipeline.events.schema import EventSchema, FieldSchema

__all__ = [
    "FileFormat",
    "csv_value",
    "detect_format",
    "open_text",
    "read_events",
    "read_messages",
    "read_records",
    "typed_value",
]

PathLike = str | os.PathLike[str]


class FileFormat(StrEnum):
    """The file layouts :func:`read_messages` understands."""

    CRITEO = "criteo"
    CSV = "csv"
    JSONL = "jsonl"
    FRAUD_CSV = "fraud-csv"
    TSV = "tsv"


_BY_SUFFIX = {
    ".txt": FileFormat.CRITEO,
    ".tsv": FileFormat.CRITEO,
    ".csv": FileFormat.CSV,
    ".jsonl": FileFormat.JSONL,
    ".ndjson": FileFormat.JSONL,
    ".json": FileFormat.JSONL,
}
_FRAUD_MARKER = "TX_FRAUD"


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def detect_format(path: PathLike) -> FileFormat:
    """Guess the format from the extension (``.gz`` stripped); see the module docstring.

    A ``.csv`` file is ``fraud-csv`` when it exists and its header has ``TX_FRAUD``.
    """
    p = Path(path)
    fmt = _BY_SUFFIX.get(_suffix(p))
    if fmt is None:
        raise FormatError(
            str(path), f"cannot tell the format from the extension; give one of {list(FileFormat)}"
        )
    if fmt is FileFormat.CSV and p.is_file():
        with open_text(p) as f:
            if _FRAUD_MARKER in f.readline():
                return FileFormat.FRAUD_CSV
    return fmt


def open_text(path: PathLike) -> TextIO:
    """Open ``path`` for reading text (UTF-8), through gzip when it ends in ``.gz``."""
    p = Path(path)
    if p.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


def csv_value(text: str) -> int | float | str | None:
    """Type a CSV cell: empty -> ``None``, then int, then finite float, else the string."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def read_events(path: PathLike, fmt: FileFormat | str | None = None) -> Iterator[Event]:
    """Yield the events of a ``criteo`` or ``fraud-csv`` file, validated.

    Raises :class:`~pipeline.errors.FormatError` naming the file and line of a bad record.
    """
    fmt = FileFormat(fmt) if fmt is not None else detect_format(path)
    if fmt is FileFormat.CRITEO:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip("\r\n"):
                    continue
                try:
                    yield CtrEvent.from_criteo_line(line)
                except DecodeError as err:
                    raise FormatError(str(path), str(err), line=number) from err
    elif fmt is FileFormat.FRAUD_CSV:
        with open_text(path) as f:
            reader = csv.DictReader(f)
            for row in reader:
                try:
                    yield TransactionEvent.from_fraud_csv_row(row)
                except DecodeError as err:
                    raise FormatError(str(path), str(err), line=reader.line_num) from err
    else:
        raise FormatError(str(path), f"format {fmt.value!r} holds records, not typed events")


def typed_value(text: str, field: FieldSchema | None) -> Any:
    """A CSV cell typed by its schema field (by :func:`csv_value` when there is none).

    >>> from pipeline.events.schema import FieldSchema as F
    >>> typed_value("04258293", F("u", "string")), typed_value("7", F("n", "int"))
    ('04258293', 7)
    >>> typed_value("a|b", F("t", "list", items="string")), typed_value("x", F("n", "int"))
    (['a', 'b'], 'x')
    """
    if field is None:
        return csv_value(text)
    if text == "":
        return None
    kind = field.type
    if kind == "string" or (kind == "timestamp" and field.unit is None):
        return text
    if kind == "bool":
        return _BOOLS.get(text.strip().lower(), text)
    if kind == "list":
        if text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        item = FieldSchema("item", field.items or "string")
        return [typed_value(part, item) for part in text.split("|")]
    try:
        return int(text)
    except ValueError:
        pass
    if kind == "int":
        return text
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def read_records(
    path: PathLike, fmt: FileFormat | str | None = None, schema: EventSchema | None = None
) -> Iterator[dict[str, Any]]:
    """Yield each record of the file as a JSON-ready dict (csv/tsv typed by ``schema``)."""
    fmt = FileFormat(fmt) if fmt is not None else detect_format(path)
    if fmt in (FileFormat.CRITEO, FileFormat.FRAUD_CSV) and schema is None:
        for event in read_events(path, fmt):
            yield to_record(event)
    elif fmt in (FileFormat.CSV, FileFormat.TSV, FileFormat.FRAUD_CSV):
        delimiter = "\t" if fmt is FileFormat.TSV else ","
        with open_text(path) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            fields = {n: (schema.get(n) if schema else None) for n in reader.fieldnames or ()}
            for row in reader:
                record: dict[str, Any] = {}
                for k, v in row.items():
                    if k is None:
                        raise FormatError(str(path), "more cells than columns", reader.line_num)
                    f_ = fields[k]
                    if v in ("", None) and f_ is not None and not f_.required:
                        continue  # an optional field left out: its default applies
                    record[k] = typed_value(v or "", f_)
                yield record
    elif fmt is FileFormat.CRITEO:
        raise FormatError(str(path), "a criteo file has no header; give --format tsv for one")
    else:
        for number, line in _json_lines(path):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise FormatError(str(path), f"bad JSON: {err}", line=number) from err
            if not isinstance(value, dict):
                raise FormatError(str(path), "a line is not a JSON object", line=number)
            yield value


def read_messages(
    path: PathLike, fmt: FileFormat | str | None = None, schema: EventSchema | None = None
) -> Iterator[bytes]:
    r"""Yield each record as a JSON message; JSON lines pass verbatim (so bad ones stay bad).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ev.jsonl"
    >>> _ = p.write_text('{"a": 1}\n\n{"bad\n')
    >>> list(read_messages(p))
    [b'{"a": 1}', b'{"bad']
    """
    fmt = FileFormat(fmt) if fmt is not None else detect_format(path)
    if fmt in (FileFormat.CRITEO, FileFormat.FRAUD_CSV) and schema is None:
        for event in read_events(path, fmt):
            yield encode(event)
    elif fmt is FileFormat.JSONL:
        for _, line in _json_lines(path):
            yield line.encode()
    else:
        for record in read_records(path, fmt, schema):
            yield json.dumps(record, separators=(",", ":")).encode()


def _json_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped:
                yield number, stripped
