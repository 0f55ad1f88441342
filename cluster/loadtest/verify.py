"""After a write load: is every acknowledged write on the server, and nothing else?

Checks against the generators' ledger (merged LoadResult.ledger):
- every acknowledged upsert not later deleted is present (Get finds every id),
  and a sample of them has exactly the vector that was written;
- every acknowledged delete is absent;
- the collection's count is exactly what it held before, plus the live
  acknowledged ids, plus those ids from failed calls that did land (a failed
  call's write may or may not have applied: it is looked up, not assumed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nestvec.cluster.loadtest.workload import WriteVectors

_GET_BATCH = 10_000


@dataclass
class Verification:
    live_expected: int
    live_missing: int
    deleted_expected: int
    deleted_present: int
    uncertain: int
    uncertain_present: int
    count_before: int
    count_expected: int
    count_now: int
    spot_checked: int
    spot_mismatched: int
    delete_found_fewer: int
    missing_examples: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.live_missing == 0 and self.deleted_present == 0 and self.spot_mismatched == 0
                and self.count_now == self.count_expected and self.delete_found_fewer == 0)

    def text(self) -> str:
        return (f"verification: {'OK' if self.ok else 'FAILED'}: {self.live_expected} acknowledged live ids, "
                f"{self.live_missing} missing; {self.deleted_expected} acknowledged deletes, "
                f"{self.deleted_present} still present; {self.spot_checked} vectors compared, "
                f"{self.spot_mismatched} differ; count {self.count_now} (expected {self.count_expected} = "
                f"{self.count_before} before + {self.live_expected} live + {self.uncertain_present} of "
                f"{self.uncertain} ids from failed calls found)"
                + (f"; deletes of acknowledged ids that found fewer: {self.delete_found_fewer}"
                   if self.delete_found_fewer else "")
                + (f"; e.g. missing {self.missing_examples}" if self.missing_examples else ""))


def _present(client, collection: str, ids: np.ndarray, dim: int | None = None):
    """(found ids, their vectors) for `ids`, asked in batches."""
    found, vecs = [], []
    for s in range(0, ids.size, _GET_BATCH):
        got = client.get(collection, ids[s: s + _GET_BATCH], dim=dim)
        found.append(got.ids)
        vecs.append(got.vectors)
    if not found:
        return np.zeros(0, np.uint64), np.zeros((0, 0), np.float32)
    return np.concatenate(found), np.concatenate(vecs)


def verify_ledger(client, collection: str, ledger: dict, count_before: int, seed: int = 0,
                  spot: int = 2000) -> Verification:
    """Check the server (through a sync nestvec Client) against the ledger."""
    upserted, deleted = ledger["acked_upserts"], ledger["acked_deletes"]
    uncertain = np.union1d(ledger["uncertain_upserts"], ledger["uncertain_deletes"])
    live = np.setdiff1d(upserted, np.union1d(deleted, uncertain))
    live_found, _ = _present(client, collection, live, dim=1)
    missing = np.setdiff1d(live, live_found)
    del_found, _ = _present(client, collection, deleted, dim=1)
    unc_found, _ = _present(client, collection, uncertain, dim=1)

    sample = np.random.default_rng(seed).choice(live_found, size=min(spot, live_found.size), replace=False) \
        if live_found.size else live_found
    got_ids, got_vecs = _present(client, collection, np.sort(sample))
    mismatched = 0
    if got_ids.size:
        want = WriteVectors(got_vecs.shape[1], seed)(got_ids)
        mismatched = int((~np.isclose(got_vecs, want, rtol=1e-6, atol=1e-6).all(axis=1)).sum())
    count_now = client.describe_collection(collection).vectors
    return Verification(
        live_expected=int(live.size), live_missing=int(missing.size),
        deleted_expected=int(deleted.size), deleted_present=int(del_found.size),
        uncertain=int(uncertain.size), uncertain_present=int(unc_found.size),
        count_before=count_before, count_expected=count_before + int(live.size) + int(unc_found.size),
        count_now=int(count_now), spot_checked=int(got_ids.size), spot_mismatched=mismatched,
        delete_found_fewer=int(ledger["delete_found_fewer"]),
        missing_examples=[int(x) for x in missing[:5]])
