"""Issue 16 acceptance 1: a stream the project does not ship trains from YAML alone.

A CSV of 14 fields of mixed types (hex-looking ids that must stay strings, an ISO time with
offsets, an epoch-milliseconds time, a bool, a list, nullable and optional fields, missing
cells) is replayed with ``freshet replay --schema job.yaml`` (a real subprocess) into the
embedded broker, and trained by the job that file describes (``decode_in: process``, the
default). No conversion code: the schema in the YAML is the only description of the stream.
The trained tables hold exactly the ids the featurizer gives the valid events (the features
reached the model), and each malformed row is in the dead-letter topic with its reason.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from configs.job import JobConfig
from pipeline.events.fast_decode import FastDecoder
from pipeline.events.formats import read_messages
from pipeline.features.featurizer import Featurizer
from pipeline.training.job import TrainJob

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

JOB = """\
schema:
  name: adclicks
  fields:
    label: {type: int, ge: 0, le: 1}
    user_id: {type: string, pattern: "^[0-9a-f]{8}$"}
    ad_id: {type: string}
    campaign: {type: int, ge: 0}
    site: {type: string, max_length: 64}
    country: {type: string, nullable: true}
    device: {type: string, required: false, default: unknown}
    is_mobile: {type: bool}
    price: {type: float, ge: 0, nullable: true}
    bid: {type: float}
    prior_clicks: {type: int, nullable: true}
    event_time: {type: timestamp, format: iso}
    server_ms: {type: timestamp, unit: ms}
    tags: {type: list, items: string, max_length: 8}
source:
  topic: TOPIC
  bootstrap_servers: [BOOTSTRAP]
  group_id: own-stream
  session_timeout_ms: 6000
  max_events: 128
store: {path: STORE}
features:
  label: label
  time_field: event_time
  sparse:
    - {type: categorical, name: user, table: ids, field: user_id}
    - {type: categorical, name: ad, table: ids, field: ad_id}
    - {type: categorical, name: campaign, table: ids, field: campaign, value_type: int}
    - {type: categorical, name: site, table: ids, field: site}
    - {type: categorical, name: country, table: ids, field: country}
    - {type: categorical, name: device, table: ids, field: device}
    - {type: categorical, name: mobile, table: ids, field: is_mobile}
    - {type: cross, name: user_x_site, table: ids, of: [user, site]}
    - {type: time, name: hour, table: ids, part: hour_of_day}
    - {type: time, name: server_weekday, table: ids, part: day_of_week, field: server_ms}
    - {type: bucketize, name: price_b, table: ids, field: price, log_step: 0.5}
    - {type: multi_hot, name: tags, table: tags, field: tags}
  aggregates:
    - {name: user_1d, key: [user_id], key_type: str, window: 1}
    - {type: since_previous, name: user_gap, key: [user_id], key_type: str}
    - {type: distinct, name: user_sites, key: [user_id], key_type: str, value: site}
  dense:
    - {name: log_bid, field: bid, log1p: true, standardize: true}
    - {name: prior, field: prior_clicks, fill: -1}
    - {name: user_count, aggregate: user_1d, stat: count, log1p: true}
    - {name: gap, aggregate: user_gap, fill: -1, log1p: true}
    - {name: n_sites, aggregate: user_sites}
model: {type: deepfm, embedding_dim: 4, hidden: [16], bottom: [8]}
"""
COLUMNS = [
    "label", "user_id", "ad_id", "campaign", "site", "country", "device", "is_mobile",
    "price", "bid", "prior_clicks", "event_time", "server_ms", "tags",
]  # fmt: skip
N_GOOD = 600
BAD = {  # column spoilt -> the reason its dead letter must give
    "label": ("2", "value out of range for 'label'"),
    "user_id": ("0425829", "invalid value for 'user_id'"),
    "event_time": ("", "wrong type for 'event_time'"),
    "bid": ("cheap", "wrong type for 'bid'"),
    "is_mobile": ("maybe", "wrong type for 'is_mobile'"),
}


def rows() -> list[dict[str, str]]:
    rng = random.Random(16)
    users = [f"{rng.randrange(16**8):08x}" for _ in range(40)] + ["04258293", "00000017"]
    start = datetime(2024, 3, 1, tzinfo=UTC)
    out = []
    for i in range(N_GOOD):
        user = users[i % len(users)]
        t = start + timedelta(minutes=7 * i)
        zone = timezone(timedelta(hours=rng.choice([-5, 0, 2, 14])))
        mobile = rng.random() < 0.5
        label = int(rng.random() < (0.7 if mobile and user < "8" else 0.15))
        out.append(
            {
                "label": str(label),
                "user_id": user,
                "ad_id": f"{rng.randrange(30):08d}",  # all digits: must stay a string
                "campaign": str(rng.randrange(5)),
                "site": rng.choice(["news", "sport", "mail"]),
                "country": rng.choice(["", "FR", "DE", "ÉU"]),
                "device": rng.choice(["", "ios", "android"]),
                "is_mobile": "true" if mobile else "false",
                "price": rng.choice(["", f"{rng.uniform(0, 40):.2f}"]),
                "bid": f"{rng.uniform(0.1, 3):.3f}",
                "prior_clicks": rng.choice(["", str(rng.randrange(9))]),
                "event_time": t.astimezone(zone).isoformat(),
                "server_ms": str(int(t.timestamp() * 1000) + rng.randrange(500)),
                "tags": "|".join(rng.sample(["a", "b", "c", "d"], rng.randrange(1, 4))),
            }
        )
    for k, (column, (value, _)) in enumerate(BAD.items()):
        out.insert(100 * k + 50, {**out[100 * k], column: value})
    return out


def test_a_new_stream_trains_from_yaml_alone(
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list],
    tmp_path: Path,
) -> None:
    data = tmp_path / "clicks.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows())
    topic = new_topic(1)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        JOB.replace("TOPIC", topic)
        .replace("BOOTSTRAP", bootstrap)
        .replace("STORE", str(tmp_path / "store"))
    )
    sent = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "replay", "--bootstrap", bootstrap,
         "--topic", topic, "--file", str(data), "--schema", str(job_file), "--no-progress"],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert f"{N_GOOD + len(BAD)} events sent" in sent.stdout

    config = JobConfig.from_yaml(job_file)
    assert config.source.decode_in == "process"
    trained_users: list[str] = []
    job = TrainJob(config.to_spec())
    job.batch_hooks.append(lambda b, r: trained_users.extend(b.events.column("user_id")))
    with job:
        summary = job.run(max_events=N_GOOD, idle_timeout_s=30)
        assert job.store is not None
        stored = {
            t: np.sort(np.concatenate([ids for ids, _ in job.store.export_rows(t)]))
            for t in ("ids", "tags")
        }
    assert summary.events == N_GOOD and summary.dead_letters == len(BAD)
    assert "04258293" in trained_users and "00000017" in trained_users  # strings, not ints

    # the model's tables hold exactly the ids of the valid events' features
    schema = config.schema_spec()
    decode = FastDecoder(schema.name, schema)
    events = []
    for message in read_messages(data, "csv", schema):
        try:
            events.append(decode(message))
        except ValueError:
            continue
    assert len(events) == N_GOOD
    expected = Featurizer(config.features.to_spec()).sparse_ids(events)
    for table in ("ids", "tags"):
        np.testing.assert_array_equal(stored[table], expected[table])

    letters = read_topic(f"{topic}.dlq", len(BAD))
    reasons = sorted(r.headers["freshet.dlq.reason"].decode() for r in letters)
    assert len(reasons) == len(BAD)
    for _, why in BAD.values():
        assert sum(why in r for r in reasons) == 1, (why, reasons)
    assert 0.0 <= summary.auc <= 1.0 and np.isfinite(summary.log_loss)  # 600 events: no bound


def test_a_run_whose_events_all_go_to_dead_letters_exits_4_with_the_reasons(
    bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    """A stream that does not match its schema: not exit 0 with "events": 0 (issue 16)."""
    from pipeline.events.replay import replay

    topic = new_topic(1)
    wrong = [(None, {"label": 0, "userId": "04258293"}) for _ in range(30)]
    assert replay(bootstrap, topic, wrong, progress=False) == 30
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        JOB.replace("TOPIC", topic)
        .replace("BOOTSTRAP", bootstrap)
        .replace("STORE", str(tmp_path / "store"))
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "train", "--config", str(job_file),
         "--idle-timeout", "15"],
        check=False, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 4, done.stderr[-2000:]
    line = [x for x in done.stderr.splitlines() if x.startswith("freshet train: all")]
    assert len(line) == 1, done.stderr[-2000:]
    assert f"all 30 events went to the dead-letter topic {topic}.dlq" in line[0]
    assert "top reasons: 30 x adclicks: missing field 'user_id' (and 12 more problems)" in line[0]
