"""CatalogActor: the one named record of which collections exist.

Every coordinator (in each gateway, in each Ray job) reads it, so a collection
created through one is visible through all. Its calls run one at a time, which
makes "create unless it exists" atomic. With a data directory it persists the
collections to catalog.json (atomically replaced) and reloads them on start,
and it tells coordinators where shards keep their files.
"""
from __future__ import annotations

import json
import os

import ray

from nestvec.cluster._storage import datadir

CATALOG_ACTOR = "catalog"

# Calibrations kept per collection (one per k asked for with target_recall).
MAX_CALIBRATIONS = 4


@ray.remote(num_cpus=0)
class CatalogActor:
    def __init__(self, data_dir: str | None = None, fsync: str = "always",
                 fsync_interval: float = 0.05, shard_threads: int = 1,
                 placement: dict | None = None):
        # placement: where shards run and what they reserve (placement.Placement.to_dict)
        self._settings = {"data_dir": data_dir, "fsync": fsync, "fsync_interval": fsync_interval,
                          "shard_threads": shard_threads, "placement": placement}
        self._collections: dict[str, dict] = {}
        if data_dir:
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
            self._lock = datadir.lock_data_dir(data_dir, check_shards=not restarted)
            path = os.path.join(data_dir, datadir.CATALOG)
            if os.path.exists(path):
                with open(path) as f:
                    self._collections = {c["name"]: c for c in json.load(f)["collections"]}
            datadir.remove_orphans(data_dir, {f"{c['name']}.{c['uid']}"
                                              for c in self._collections.values()})

    def settings(self) -> dict:
        return dict(self._settings)

    def create(self, config: dict) -> bool:
        """Record a collection; False if the name is taken."""
        if config["name"] in self._collections:
            return False
        self._collections[config["name"]] = config
        self._persist()
        return True

    def drop(self, name: str) -> dict | None:
        config = self._collections.pop(name, None)
        if config is not None:
            self._persist()
        return config

    def set_calibration(self, name: str, k: int, curve: dict) -> None:
        """Keep a collection's funnel calibration at k with it (planner.py): at most
        MAX_CALIBRATIONS per collection, the least recently made dropped first, so a
        read key asking for ever new k cannot grow the catalog file without bound."""
        if name in self._collections:
            kept = self._collections[name].setdefault("calibration", {})
            kept.pop(str(k), None)
            kept[str(k)] = curve  # (re)inserted last: dicts keep insertion order
            while len(kept) > MAX_CALIBRATIONS:
                kept.pop(next(iter(kept)))
            self._persist()

    def set_index(self, name: str, index: dict) -> dict | None:
        """Record a collection's ANN index spec (CreateIndex); returns the updated config."""
        if name not in self._collections:
            return None
        self._collections[name]["index"] = index
        self._collections[name].pop("calibration", None)  # an index changes the curve
        self._persist()
        return self._collections[name]

    def add_payload_fields(self, name: str, uid: str, fields: dict) -> dict | str | None:
        """Record new payload fields of a collection (a field's first write declares its
        type). Returns the config, None if the collection is gone, or an error string
        when a field is already declared with another type (two writers raced)."""
        cfg = self._collections.get(name)
        if cfg is None or cfg.get("uid") != uid:
            return None
        schema = cfg.setdefault("payload_schema", {})
        clash = {f: t for f, t in fields.items() if schema.get(f, t) != t}
        if clash:
            return "; ".join(f"payload field {f!r} is {schema[f]}, not {t}" for f, t in clash.items())
        if any(f not in schema for f in fields):
            schema.update(fields)
            self._persist()
        return cfg

    def get(self, name: str) -> dict | None:
        return self._collections.get(name)

    def list(self) -> list[dict]:
        return [self._collections[n] for n in sorted(self._collections)]

    def _persist(self) -> None:
        if self._settings["data_dir"]:
            datadir.write_json_atomic(os.path.join(self._settings["data_dir"], datadir.CATALOG),
                                      {"collections": self.list()})
