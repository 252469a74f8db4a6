"""Acceptance 4: kill a service shard during serving; no wrong answer, back within 30 s.

A replica reads every table from a 2-shard service with no cache, so every request reaches
both shards. While it serves version 4, shard 1 is SIGKILLed and restarted from its
directory two seconds later. Every response is checked against the full-copy prediction of
the version it reports; the rest must be ServiceUnavailableError (a replica's 503, with the
reason). The restarted shard answers the version the replica serves (its log keeps the undo
records) within 30 s, and the deltas after it go through.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.errors import ServiceUnavailableError
from pipeline.embedservice.settings import ClientSettings
from pipeline.embedservice.shard import TableSchema
from pipeline.embedservice.tables import ServiceRows, publish_delta
from pipeline.publishing.delta import ModelDelta
from pipeline.serving.model import Blueprint, ServingModel
from pipeline.testing.embed_deltas import (
    CTR_FEATURES,
    CTR_MODEL,
    ctr_deltas,
    ctr_events,
    ctr_tables,
)
from pipeline.testing.embed_shards import start_shards

pytestmark = pytest.mark.integration

TABLES = [t.name for t in ctr_tables()]
FAST = ClientSettings(timeout_s=1.0, retries=2, backoff_s=0.05, max_backoff_s=0.2)


def test_killing_a_shard_never_serves_a_wrong_answer(tmp_path: Path) -> None:
    shards = start_shards(tmp_path / "svc", 2, "--checkpoint-every", "3")
    endpoints = [s.endpoint for s in shards]
    try:
        owner = ServiceClient(endpoints, FAST)
        for t in ctr_tables():
            owner.register(TableSchema.from_table(t, owner="ctr"))
        deltas = list(ctr_deltas(tmp_path / "ctr", versions=8))
        requests = [ctr_events(np.random.default_rng(7 + i), 64, users=700) for i in range(2)]
        full = ServingModel(Blueprint(CTR_FEATURES, CTR_MODEL), tmp_path / "full").open()
        expected: dict[int, list[np.ndarray]] = {}
        for d in deltas:
            full.commit(full.prepare(d))
            expected[d.version] = [full.predict(r) for r in requests]
        full.close()

        rows = ServiceRows(ServiceClient(endpoints, FAST), TABLES, cache_rows=0)
        replica = ServingModel(Blueprint(CTR_FEATURES, CTR_MODEL, rows=rows), tmp_path / "r").open()
        served = wrong = unavailable = 0
        reasons: list[str] = []
        times: dict[str, float] = {}

        def chaos() -> None:
            time.sleep(0.3)
            shards[1].kill()
            times["killed"] = time.monotonic()
            time.sleep(2.0)
            times["restart"] = time.monotonic()
            shards[1].start()
            times["restarted"] = time.monotonic()

        def publish(d: ModelDelta) -> None:
            deadline = time.monotonic() + 120
            while True:
                try:
                    publish_delta(owner, d, "ctr", TABLES)
                    return
                except ServiceUnavailableError:
                    assert time.monotonic() < deadline, "the service did not come back"
                    time.sleep(0.2)

        def serve_round() -> None:
            nonlocal served, wrong, unavailable
            for events, want in zip(requests, expected[replica.version or 0], strict=True):
                try:
                    got = replica.predict(events)
                except ServiceUnavailableError as err:
                    unavailable += 1
                    reasons.append(str(err))
                    continue
                served += 1
                if not np.allclose(got, want, rtol=0, atol=1e-6):
                    wrong += 1
                if "restart" in times and "back" not in times:
                    times["back"] = time.monotonic()

        thread = threading.Thread(target=chaos)
        for d in deltas:
            publish(d)
            replica.commit(replica.prepare(d))
            if d.version == 4:
                thread.start()
                deadline = time.monotonic() + 120
                while "back" not in times:
                    assert time.monotonic() < deadline, (
                        f"no answer after the restart: {reasons[-1:]}"
                    )
                    serve_round()
            else:
                for _ in range(2):
                    serve_round()
        thread.join()
        replica.close()
    finally:
        for s in shards:
            s.stop()
    down, back = times["back"] - times["killed"], times["back"] - times["restart"]
    print(
        f"served {served}, 503 {unavailable}, wrong {wrong}; kill->back {down:.1f} s, "
        f"restart->back {back:.1f} s"
    )
    assert wrong == 0
    assert unavailable > 0 and served > 0
    assert any("shard 1" in r for r in reasons), reasons[:3]
    assert back <= 30.0
    assert replica.version == 8 and shards[1].starts == 2
