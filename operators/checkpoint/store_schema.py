"""A store's configuration as JSON, so a checkpoint can rebuild the store it came from.

Every field of :class:`~embedding_store.config.StoreConfig` and its tables is recorded except
the path, which the restorer chooses.

>>> from embedding_store.config import OptimizerConfig, SstConfig, StoreConfig, TableConfig
>>> cfg = StoreConfig("/a", (TableConfig("ads", 8, OptimizerConfig("adam", lr=0.1)),), 2)
>>> store_config_from_json(store_config_to_json(cfg), "/b") == StoreConfig("/b", cfg.tables, 2)
True
>>> cfg = StoreConfig("/a", cfg.tables, sst=SstConfig(compression="zstd"))
>>> store_config_from_json(store_config_to_json(cfg), "/b").sst.compression
'zstd'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from embedding_store.config import (
    OptimizerConfig,
    SstConfig,
    StoreConfig,
    TableConfig,
    Unadmitted,
)


def table_config_to_json(table: TableConfig) -> dict[str, Any]:
    """Every field of ``table`` as JSON values."""
    out = dataclasses.asdict(table)
    out["unadmitted"] = table.unadmitted.value
    return out


def table_config_from_json(data: Mapping[str, Any]) -> TableConfig:
    """The inverse of :func:`table_config_to_json`."""
    fields = dict(data)
    fields["optimizer"] = OptimizerConfig(**fields["optimizer"])
    fields["unadmitted"] = Unadmitted(fields["unadmitted"])
    return TableConfig(**fields)


def store_config_to_json(config: StoreConfig) -> dict[str, Any]:
    """Every field of ``config`` but its path, as JSON values."""
    out = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in ("path", "tables", "sst")
    }
    out["sst"] = dataclasses.asdict(config.sst)
    out["tables"] = [table_config_to_json(t) for t in config.tables]
    return out


def store_config_from_json(
    data: Mapping[str, Any], path: str, num_shards: int | None = None
) -> StoreConfig:
    """A :class:`StoreConfig` at ``path`` from :func:`store_config_to_json`'s output.

    ``num_shards`` overrides the recorded shard count (rows are routed again on import).
    Checkpoints written before ``sst`` was recorded get the default layout.
    """
    fields: dict[str, Any] = {k: v for k, v in data.items() if k != "tables"}
    if "sst" in fields:
        fields["sst"] = SstConfig(**fields["sst"])
    if num_shards is not None:
        fields["num_shards"] = num_shards
    tables = tuple(table_config_from_json(t) for t in data["tables"])
    return StoreConfig(path=path, tables=tables, **fields)
