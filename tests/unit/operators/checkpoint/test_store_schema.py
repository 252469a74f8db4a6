"""A store's configuration as JSON: every field but the path, in a fixed order, and back."""

from __future__ import annotations

import dataclasses
import json

from embedding_store.config import (
    OptimizerConfig,
    SstConfig,
    StoreConfig,
    TableConfig,
    Unadmitted,
)
from operators.checkpoint.store_schema import (
    store_config_from_json,
    store_config_to_json,
    table_config_from_json,
    table_config_to_json,
)

TABLE = TableConfig(
    "ads",
    8,
    OptimizerConfig("adam", lr=0.1),
    seed=3,
    admit_after=2,
    unadmitted=Unadmitted.ZEROS,
)
CONFIG = StoreConfig(
    "/a", (TABLE, TableConfig("users", 4)), num_shards=2, sst=SstConfig(compression="zstd")
)


def test_a_table_as_json_values_and_back() -> None:
    out = table_config_to_json(TABLE)
    assert json.loads(json.dumps(out)) == out  # plain JSON values
    assert out["unadmitted"] == Unadmitted.ZEROS.value and isinstance(out["unadmitted"], str)
    assert out["optimizer"] == dataclasses.asdict(TABLE.optimizer)
    assert list(out) == [f.name for f in dataclasses.fields(TableConfig)]
    back = table_config_from_json(json.loads(json.dumps(out)))
    assert back == TABLE
    assert back.unadmitted is Unadmitted.ZEROS and isinstance(back.optimizer, OptimizerConfig)


def test_a_store_as_json_without_its_path_in_field_order() -> None:
    out = store_config_to_json(CONFIG)
    assert json.loads(json.dumps(out)) == out
    names = [f.name for f in dataclasses.fields(StoreConfig)]
    want = [n for n in names if n not in ("path", "tables", "sst")] + ["sst", "tables"]
    assert list(out) == want
    assert out["sst"] == dataclasses.asdict(CONFIG.sst) and out["sst"]["compression"] == "zstd"
    assert out["tables"] == [table_config_to_json(t) for t in CONFIG.tables]
    assert out["num_shards"] == 2


def test_a_store_from_json_at_a_new_path_with_its_shards_or_others() -> None:
    data = json.loads(json.dumps(store_config_to_json(CONFIG)))
    assert store_config_from_json(data, "/b") == dataclasses.replace(CONFIG, path="/b")
    moved = store_config_from_json(data, "/c", num_shards=5)
    assert moved == dataclasses.replace(CONFIG, path="/c", num_shards=5)
    # checkpoints written before the sst layout was recorded get the default one
    del data["sst"]
    old = store_config_from_json(data, "/d")
    assert old.sst == SstConfig() and old.tables == CONFIG.tables and old.num_shards == 2
