"""File readers: Criteo TSV, fraud CSV, plain CSV, JSON lines; gzip; format detection; errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.errors import FormatError
from pipeline.events.formats import (
    FileFormat,
    csv_value,
    detect_format,
    read_events,
    read_messages,
    read_records,
)
from pipeline.events.kinds import CtrEvent, TransactionEvent, decode

SHARED = Path(__file__).resolve().parents[4].parent / "shared" / "data"
CRITEO = SHARED / "criteo" / "train.txt"
FRAUD = SHARED / "fraud" / "transactions.csv.gz"

FRAUD_HEADER = (
    "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,"
    "TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO\n"
)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.txt", FileFormat.CRITEO),
        ("a.tsv.gz", FileFormat.CRITEO),
        ("a.jsonl", FileFormat.JSONL),
        ("a.NDJSON.gz", FileFormat.JSONL),
        ("a.json", FileFormat.JSONL),
        ("missing.csv", FileFormat.CSV),
    ],
)
def test_detect_format_by_extension(name: str, fmt: FileFormat) -> None:
    assert detect_format(name) is fmt


def test_detect_fraud_csv_by_header(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(FRAUD_HEADER)
    assert detect_format(path) is FileFormat.FRAUD_CSV
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b\n1,2\n")
    assert detect_format(plain) is FileFormat.CSV
    with pytest.raises(FormatError, match="extension"):
        detect_format(tmp_path / "data.parquet")


def test_criteo_sample() -> None:
    events = list(read_events(CRITEO))
    assert len(events) == 1999
    assert all(isinstance(e, CtrEvent) for e in events)
    assert 0.15 < sum(e.label for e in events) / len(events) < 0.25  # positive rate 0.209
    messages = list(read_messages(CRITEO))
    assert [decode("ctr", m) for m in messages[:50]] == events[:50]
    first = next(read_records(CRITEO))
    assert first["label"] == 0 and first["c1"] == "68fd1e64" and first["i12"] is None


def test_criteo_gzip_and_bad_lines(tmp_path: Path) -> None:
    lines = CRITEO.read_text().splitlines(keepends=True)[:5]
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wt") as f:
        f.writelines([*lines[:2], "\n", *lines[2:]])  # a blank line is skipped
    assert len(list(read_messages(path))) == 5
    bad = tmp_path / "bad.txt"
    bad.write_text(lines[0] + "1\t2\n")
    with pytest.raises(FormatError, match=r"bad\.txt:2: .*40 tab-separated columns"):
        list(read_events(bad))


def test_fraud_csv_sample() -> None:
    events = []
    for event in read_events(FRAUD):
        events.append(event)
        if len(events) == 500:
            break
    assert all(isinstance(e, TransactionEvent) for e in events)
    assert events[0].transaction_id == 0 and events[0].customer_id == 596
    assert events[0].timestamp.isoformat() == "2018-04-01T00:00:31+00:00"
    assert len({e.transaction_id for e in events}) == 500
    times = [e.timestamp for e in events]
    assert times == sorted(times)  # time ordered
    message = next(read_messages(FRAUD))
    assert json.loads(message)["timestamp"] == "2018-04-01T00:00:31Z"
    assert "TX_FRAUD_SCENARIO" not in message.decode()  # never a feature


def test_fraud_csv_bad_row_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    path.write_text(
        FRAUD_HEADER
        + "0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,0\n"
        + "1,2018-04-01 00:02:10,4961,3412,-81.51,130,0,0,0\n"
    )
    with pytest.raises(FormatError, match=r"tx\.csv:3: .*out of range for 'amount'"):
        list(read_events(path, "fraud-csv"))


def test_plain_csv_types_its_cells(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,score,name,note\n1,0.5,ab,\n2,-3,cd,x\n")
    assert list(read_records(path)) == [
        {"id": 1, "score": 0.5, "name": "ab", "note": None},
        {"id": 2, "score": -3, "name": "cd", "note": "x"},
    ]
    assert next(read_messages(path)) == b'{"id":1,"score":0.5,"name":"ab","note":null}'
    assert csv_value("nan") == "nan" and csv_value("1e3") == 1000.0
    with pytest.raises(FormatError, match="not typed events"):
        list(read_events(path))


def test_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"a": 1}\n\n  {"b": 2}  \n{"bad\n')
    assert list(read_messages(path)) == [b'{"a": 1}', b'{"b": 2}', b'{"bad']  # verbatim
    records = read_records(path)
    assert next(records) == {"a": 1} and next(records) == {"b": 2}
    with pytest.raises(FormatError, match=r"e\.jsonl:4: bad JSON"):
        next(records)
    arr = tmp_path / "arr.jsonl"
    arr.write_text("[1, 2]\n")
    with pytest.raises(FormatError, match="not a JSON object"):
        list(read_records(arr))
