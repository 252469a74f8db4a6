"""What a served request may and may not do: it never grows the store, and a score depends only
on (model version, event), never on the other events of the same request."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from embedding_store.initializers import initial_values
from pipeline.events.generators import generate
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.publishing.snapshot import SnapshotStore
from pipeline.serving.model import Blueprint, ServingModel
from pipeline.testing.replicas import MemoryTopic, TrainingHarness, events_of, transaction_specs

EVENTS = events_of("transaction", list(generate("transaction", 3000, seed=9)))


@pytest.fixture(scope="module")
def snaps(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotStore, TrainingHarness]:
    tmp = tmp_path_factory.mktemp("snap")
    harness = TrainingHarness(*transaction_specs(), tmp / "t", num_shards=1).open()
    for i in range(0, 2800, 200):
        harness.train(EVENTS[i : i + 200])
    pub = Publisher(
        "unused:9092", "d", tmp / "snaps", settings=PublisherSettings(topic="d"), sink=MemoryTopic()
    ).start()
    harness.publish(pub, EVENTS[2800:], snapshot=True)
    return SnapshotStore(tmp / "snaps"), harness


def loaded(tmp: Path, snaps: SnapshotStore, shards: int = 2) -> ServingModel:
    model = ServingModel(Blueprint(*transaction_specs(), num_shards=shards), tmp).open()
    info = snaps.newest()
    assert info is not None
    model.load_snapshot(snaps, info)
    return model


def rows(model: ServingModel) -> int:
    """Distinct rows: after a flush RocksDB holds every row (DRAM only caches copies)."""
    model.store.flush()
    return sum(c or 0 for _, c in model.rows_per_tier(count_cold=True).values())


def test_unseen_ids_read_their_initial_value_and_are_never_stored(
    tmp_path: Path, snaps: tuple[SnapshotStore, TrainingHarness]
) -> None:
    """Issue 17 item 7: 10,000 requests with new ids leave the replica's row count unchanged."""
    store, harness = snaps
    model = loaded(tmp_path / "m", store)
    try:
        before = rows(model)
        info = store.newest()
        assert info is not None and before == info.rows
        template = EVENTS[2800]
        requests = 10_000
        first: list[float] = []
        for i in range(requests):  # each request names a customer and a terminal never seen
            event = template.model_copy(
                update={"customer_id": 10**9 + i, "terminal_id": 2 * 10**9 + i}
            )
            first.append(float(model.predict([event])[0]))
            if i % 1000 == 999:
                model.maintain()
        assert rows(model) == before
        # the scores are the trainer's for ids it never stored: their deterministic initial rows
        probe = [
            template.model_copy(update={"customer_id": 10**9 + i, "terminal_id": 2 * 10**9 + i})
            for i in range(0, requests, 997)
        ]
        want = harness.reference_scores(probe)
        got = np.array([first[i] for i in range(0, requests, 997)], dtype=np.float32)
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(model.predict(probe), want)  # and asking again changes nothing
        assert rows(model) == before
        # a stored row is still read as stored (not its initial value)
        ids = np.array([int(harness.store.export_rows("tx").__next__()[0][0])], np.int64)
        stored = model.store.lookup_stored("tx", ids).numpy()
        t = model.store.tables[0]
        assert not np.array_equal(stored, initial_values(ids, t.dim, t.seed, t.init_scale))
    finally:
        model.close()


def test_a_score_depends_on_the_event_and_the_version_only(
    tmp_path: Path, snaps: tuple[SnapshotStore, TrainingHarness]
) -> None:
    """Issue 21 item 5: permuting a request or splitting it gives identical scores."""
    store, _ = snaps
    model = loaded(tmp_path / "m", store)
    try:
        # 60 events of a handful of customers, so in-request aggregates would feed later events
        batch = [
            e.model_copy(update={"customer_id": 7 + i % 3}) for i, e in enumerate(EVENTS[2800:2860])
        ]
        featurizer = model._featurizer
        rng = np.random.default_rng(0)
        order = rng.permutation(len(batch))
        cuts = [0, 7, 8, 31, 60]
        arrangements = {
            "shuffled": [[batch[i] for i in order]],
            "one by one": [[e] for e in batch],
            "split": [batch[a:b] for a, b in itertools.pairwise(cuts)],
        }
        unshuffle = {"shuffled": np.argsort(order)}
        whole = featurizer.transform(batch, update=False, alone=True)
        scores = model.predict(batch)
        for name, requests in arrangements.items():
            parts = [featurizer.transform(r, update=False, alone=True) for r in requests]
            back = unshuffle.get(name, np.arange(len(batch)))
            # the features of each event are bitwise the same however the request is cut ...
            dense = np.concatenate([p.dense for p in parts])[back]
            np.testing.assert_array_equal(dense, whole.dense, err_msg=name)
            sparse = np.concatenate([np.asarray(p.sparse["tx"]) for p in parts])[back]
            np.testing.assert_array_equal(sparse, np.asarray(whole.sparse["tx"]), err_msg=name)
            # ... so the scores are too, up to float32 rounding of batched matrix products
            got = np.concatenate([model.predict(r) for r in requests])[back]
            np.testing.assert_allclose(got, scores, rtol=0, atol=1e-6, err_msg=name)
    finally:
        model.close()
