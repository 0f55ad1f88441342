"""CatalogActor: the one named record of which collections exist.

Every coordinator (in each gateway, in each Ray job) reads it, so a collection
created through one is visible through all. Its calls run one at a time, which
makes "create unless it exists" atomic.
"""
from __future__ import annotations

import ray

CATALOG_ACTOR = "catalog"


@ray.remote(num_cpus=0)
class CatalogActor:
    def __init__(self):
        self._collections: dict[str, dict] = {}

    def create(self, config: dict) -> bool:
        """Record a collection; False if the name is taken."""
        if config["name"] in self._collections:
            return False
        self._collections[config["name"]] = config
        return True

    def drop(self, name: str) -> dict | None:
        return self._collections.pop(name, None)

    def get(self, name: str) -> dict | None:
        return self._collections.get(name)

    def list(self) -> list[dict]:
        return [self._collections[n] for n in sorted(self._collections)]
