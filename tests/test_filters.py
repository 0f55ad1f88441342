"""Payloads and filtered search over real gRPC, against the brute-force oracle over the
matching rows: corpusA's real WordNet attributes (../shared/data/corpusA/payload.jsonl.gz),
selectivities from 100% to a single row and to nothing, every metric, prefixes, funnels,
several shards; payload round trips, SetPayload, Count, Get and Delete by filter, bad
input refused with nothing changed, and payloads through kill -9 and restart."""
from __future__ import annotations

import gzip
import json
import signal
import uuid

import numpy as np
import pytest

from conftest import SHARED_DATA
from nestvec.client import Client
from nestvec.errors import NestvecError
from oracle import assert_matches_oracle
from proc_util import descendants, free_port, kill9
from test_crash import _start_server

N = 12_000
PAYLOAD = SHARED_DATA / "corpusA" / "payload.jsonl.gz"


def _rows(n: int) -> list[dict]:
    """Payloads of n docs spread over corpusA (its file is sorted by part of speech)."""
    out = []
    with gzip.open(PAYLOAD, "rt") as f:
        every = [json.loads(line) for line in f]
    for i in _spread(n):
        r = dict(every[i])
        # A list field and a float field beside the file's own keyword/int/bool ones,
        # and some rows without a value.
        r["tags"] = [r["pos"], r["lexname"].split(".")[1]] if r["id"] % 7 else []
        r["weight"] = r["gloss_chars"] / 10.0
        if r["id"] % 11 == 0:
            del r["gloss_chars"]
        out.append({k: v for k, v in r.items() if k != "id"})
    return out


def _spread(n: int) -> np.ndarray:
    return np.linspace(0, 99_999, n).astype(np.int64)


def _matches(row: dict, f) -> bool:
    """A plain-Python reading of the SDK's filter form (the oracle's side)."""
    ops = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
           "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}

    def eq(v, want):
        return (want in v) if isinstance(v, list) else (v is not None and v == want
                                                       and isinstance(v, bool) == isinstance(want, bool))
    for key, cond in f.items():
        if key == "$and":
            ok = all(_matches(row, x) for x in cond)
        elif key == "$or":
            ok = any(_matches(row, x) for x in cond)
        elif key == "$not":
            ok = not _matches(row, cond)
        elif isinstance(cond, dict):
            v = row.get(key)
            ok = True
            for op, arg in cond.items():
                if op in ops:
                    ok &= v is not None and not isinstance(v, (list, bool, str)) and ops[op](v, arg)
                elif op == "$in":
                    ok &= any(eq(v, a) for a in arg)
                elif op == "$nin":
                    ok &= not any(eq(v, a) for a in arg)
                elif op == "$ne":
                    ok &= not eq(v, arg)
                elif op == "$exists":
                    ok &= (v is not None) == arg
        else:
            ok = eq(row.get(key), cond)
        if not ok:
            return False
    return True


FILTERS = [
    {"pos": "noun"},                                            # ~60%: the dense path
    {"lexname": "noun.food"},                                   # a few %
    {"lexname": {"$in": ["noun.plant", "verb.weather", "adj.pert"]}},
    {"gloss_chars": {"$gte": 40, "$lt": 60}},
    {"pos": "verb", "has_example": True},
    {"$or": [{"lexname": "noun.motive"}, {"weight": {"$gt": 30.0}}]},
    {"$not": {"pos": "noun"}, "tags": "all"},
    {"tags": {"$in": ["animal", "artifact"]}},
    {"gloss_chars": {"$exists": False}},
    {"pos": {"$ne": "adj"}, "lemmas": {"$gte": 3}},
    {"lemmas": {"$gte": 0}},                                    # 100%
    {"lexname": "no.such.lexname"},                             # nothing
]


@pytest.fixture(scope="module")
def loaded(gateway, corpus):
    rng = np.random.default_rng(3)
    docs = corpus["docs"][_spread(N)]
    rows = _rows(N)
    ids = np.arange(N, dtype=np.uint64) * 3 + 1
    name = f"filters-{uuid.uuid4().hex[:6]}"
    with Client(gateway.address, timeout=120) as c:
        c.create_collection(name, 384, "cosine", shards=2, payload_schema={"weight": "float"})
        for s in range(0, N, 4000):
            c.upsert(name, ids[s:s + 4000], docs[s:s + 4000], payload=rows[s:s + 4000])
        gone = rng.choice(N, 300, replace=False)  # tombstones must never come back
        c.delete(name, ids[gone])
    keep = np.ones(N, dtype=bool)
    keep[gone] = False
    # a single-row filter: a gloss length exactly one kept row has
    lengths = [r.get("gloss_chars") for r, k in zip(rows, keep) if k]
    single = next(v for v in set(lengths) if v is not None and lengths.count(v) == 1)
    yield {"name": name, "ids": ids[keep], "docs": docs[keep], "rows": [r for r, k in zip(rows, keep) if k],
           "queries": corpus["queries"][:6], "single": {"gloss_chars": single}}
    with Client(gateway.address) as c:
        c.drop_collection(name)


def _mask(data, f) -> np.ndarray:
    return np.array([_matches(r, f) for r in data["rows"]], dtype=bool)


@pytest.mark.parametrize("f", FILTERS + ["single"], ids=lambda f: json.dumps(f)[:40])
def test_filtered_search_is_the_brute_force_answer_over_matching_rows(client, loaded, f):
    if f == "single":
        f = loaded["single"]
    mask = _mask(loaded, f)
    q = loaded["queries"]
    for dim, funnel in ((384, None), (64, None), (384, [(64, 60)]), (384, [(32, 200), (128, 40)])):
        res = client.search(loaded["name"], q, k=10, dim=dim, funnel=funnel, filter=f)
        assert res.ids.shape == (len(q), min(10, int(mask.sum()))), (f, dim, funnel)
        if mask.any():
            assert_matches_oracle(res.ids, res.scores, loaded["ids"][mask], loaded["docs"][mask], q,
                                  "cosine", dim, 10, funnel or ())
    for qi, dim in ((0, 384), (1, 64), (2, 384)):  # one query a call: the engine's 1-query path
        res = client.search(loaded["name"], q[qi:qi + 1], k=10, dim=dim, filter=f)
        if mask.any():
            assert_matches_oracle(res.ids, res.scores, loaded["ids"][mask], loaded["docs"][mask],
                                  q[qi:qi + 1], "cosine", dim, 10)
        else:
            assert res.ids.shape == (1, 0)
    assert client.count(loaded["name"], filter=f) == int(mask.sum())


def test_payloads_come_back_with_search_and_get(client, loaded):
    f = {"lexname": {"$in": ["noun.food", "noun.plant"]}}
    res = client.search(loaded["name"], loaded["queries"][:3], k=5, filter=f, with_payload=True)
    by_id = dict(zip(loaded["ids"].tolist(), loaded["rows"]))
    for qi in range(3):
        for j, i in enumerate(res.ids[qi].tolist()):
            want = {k: v for k, v in by_id[i].items() if not (k == "tags" and v == [])}
            got = res.payloads[qi][j]
            assert {k: v for k, v in got.items() if not (k == "tags" and v == [])} == want
            assert got["lexname"] in ("noun.food", "noun.plant")
    some = loaded["ids"][[5, 17, 900]]
    g = client.get(loaded["name"], some, with_payload=True, payload_fields=["pos", "gloss_chars"])
    for i, p in zip(g.ids.tolist(), g.payloads):
        assert p == {k: by_id[i][k] for k in ("pos", "gloss_chars") if k in by_id[i]}
    # Get by filter: the smallest matching ids, ascending
    mask = _mask(loaded, {"pos": "adv"})
    g = client.get(loaded["name"], filter={"pos": "adv"}, limit=25, with_payload=True)
    assert g.ids.tolist() == sorted(loaded["ids"][mask].tolist())[:25]
    assert all(p["pos"] == "adv" for p in g.payloads)
    np.testing.assert_array_equal(g.vectors, loaded["docs"][np.searchsorted(loaded["ids"], g.ids)])


def test_other_metrics_and_shard_counts(client, corpus):
    rows, docs = _rows(3000), corpus["docs"][_spread(3000)]
    q = corpus["queries"][10:14]
    f = {"$or": [{"pos": "verb"}, {"gloss_chars": {"$lt": 50}}]}
    mask = np.array([_matches(r, f) for r in rows])
    for metric, shards in (("dot", 3), ("l2", 1)):
        name = f"fm-{metric}-{uuid.uuid4().hex[:6]}"
        client.create_collection(name, 384, metric, shards=shards)
        try:
            client.upsert(name, np.arange(3000), docs, payload=rows)
            for dim, funnel in ((384, None), (128, None), (384, [(64, 50)])):
                res = client.search(name, q, k=7, dim=dim, funnel=funnel, filter=f)
                assert_matches_oracle(res.ids, res.scores, np.arange(3000)[mask], docs[mask], q,
                                      metric, dim, 7, funnel or ())
                one = client.search(name, q[:1], k=7, dim=dim, funnel=funnel, filter=f)
                assert_matches_oracle(one.ids, one.scores, np.arange(3000)[mask], docs[mask], q[:1],
                                      metric, dim, 7, funnel or ())
        finally:
            client.drop_collection(name)


def test_set_payload_and_delete_by_filter(client, corpus):
    name = f"fset-{uuid.uuid4().hex[:6]}"
    docs, rows = corpus["docs"][_spread(2000)], _rows(2000)
    client.create_collection(name, 384, "cosine", shards=2)
    try:
        client.upsert(name, np.arange(2000), docs, payload=rows)
        nouns = np.array([r["pos"] == "noun" for r in rows])
        assert nouns.sum() > 100 and len(rows) == 2000
        assert client.count(name, {"pos": "noun"}) == nouns.sum()
        # relabel 100 nouns as verbs: searches see it once acknowledged
        moved = np.flatnonzero(nouns)[:100]
        assert client.set_payload(name, np.r_[moved, [10**9]], {"pos": ["verb"] * 101}) == 100
        assert client.count(name, {"pos": "noun"}) == nouns.sum() - 100
        res = client.search(name, docs[moved[:4]], k=3, filter={"pos": "noun"})
        assert not set(res.ids.ravel().tolist()) & set(moved.tolist())
        # SetPayload leaves other fields and the vectors alone
        g = client.get(name, moved[:2], with_payload=True)
        assert [p["lexname"] for p in g.payloads] == [rows[i]["lexname"] for i in moved[:2]]
        np.testing.assert_array_equal(g.vectors, docs[moved[:2]])
        # None clears a field
        client.set_payload(name, moved[:1], {"gloss_chars": [None]})
        assert "gloss_chars" not in client.get(name, moved[:1], with_payload=True).payloads[0]
        # an upsert without payload replaces it with none
        client.upsert(name, moved[1:2], docs[moved[1:2]])
        assert client.get(name, moved[1:2], with_payload=True).payloads == [{}]
        # delete by filter
        verbs = client.count(name, {"pos": "verb"})
        assert client.delete(name, filter={"pos": "verb"}) == verbs
        assert client.count(name, {"pos": "verb"}) == 0
        assert client.count(name) == 2000 - verbs
    finally:
        client.drop_collection(name)


BAD_FILTERS = [
    ({"nope": "x"}, "unknown payload field"),
    ({"gloss_chars": "long"}, "gloss_chars"),
    ({"pos": {"$gt": 3}}, "pos"),
    ({"has_example": 1}, "has_example"),
    ({"pos": {"$regex": "n.*"}}, "$regex"),
    ({"$xor": []}, "$xor"),
]


@pytest.mark.parametrize("f,why", BAD_FILTERS, ids=lambda x: str(x)[:30])
def test_bad_filters_are_invalid_argument(client, loaded, f, why):
    for call in (lambda: client.search(loaded["name"], loaded["queries"][:1], k=3, filter=f),
                 lambda: client.count(loaded["name"], f),
                 lambda: client.delete(loaded["name"], filter=f)):
        with pytest.raises(NestvecError) as err:
            call()
        assert err.value.code == "INVALID_ARGUMENT" and why in err.value.message, err.value.message
    assert client.count(loaded["name"]) == len(loaded["ids"])  # nothing deleted


def test_too_deep_a_filter_is_refused(client, loaded):
    f = {"pos": "noun"}
    for _ in range(40):
        f = {"$not": f}
    with pytest.raises(NestvecError) as err:
        client.search(loaded["name"], loaded["queries"][:1], k=3, filter=f)
    assert err.value.code == "INVALID_ARGUMENT" and "deep" in err.value.message


def test_bad_payloads_change_nothing(client, loaded):
    name, ids, docs = loaded["name"], loaded["ids"][:3], loaded["docs"][:3]
    before = client.get(name, ids, with_payload=True)
    bad = [
        [{"pos": 5}, {"pos": 6}, {"pos": 7}],             # an int into a keyword field
        [{"weight": "heavy"}] * 3,                        # a str into a float field
        [{"gloss_chars": 1.5}] * 3,                       # a float into an int field
        [{"bad name!": 1}] * 3,                           # an invalid field name
        [{"tags": ["x" * 2000]}] * 3,                     # a keyword over the length limit
    ]
    for p in bad:
        with pytest.raises(NestvecError) as err:
            client.upsert(name, ids, docs, payload=p)
        assert err.value.code == "INVALID_ARGUMENT", p
        with pytest.raises(NestvecError) as err:
            client.set_payload(name, ids, p)
        assert err.value.code == "INVALID_ARGUMENT", p
    after = client.get(name, ids, with_payload=True)
    assert after.payloads == before.payloads
    np.testing.assert_array_equal(after.vectors, before.vectors)
    assert "bad name!" not in client.describe_collection(name).payload_schema


def test_payloads_survive_kill9_and_restart(tmp_path, corpus):
    docs, rows = corpus["docs"][_spread(3000)], _rows(3000)
    data_dir, port, log = str(tmp_path / "data"), free_port(), str(tmp_path / "server.log")
    address = f"127.0.0.1:{port}"
    server = _start_server(data_dir, port, log)
    try:
        with Client(address, timeout=60) as c:
            c.create_collection("fdur", 384, "cosine")
            c.upsert("fdur", np.arange(3000), docs, payload=rows)
            c.set_payload("fdur", np.arange(0, 3000, 2), {"has_example": [False] * 1500})
            assert c.count("fdur", {"lexname": "noun.person"}) > 0
            c.delete("fdur", filter={"lexname": "noun.person"})
            want_count = c.count("fdur", {"has_example": True})
            want = c.search("fdur", corpus["queries"][:4], k=10, filter={"has_example": True},
                            with_payload=True)
        kill9([server.pid] + descendants(server.pid))
        server = _start_server(data_dir, port, log)
        with Client(address, timeout=60) as c:
            assert c.count("fdur", {"has_example": True}) == want_count
            assert c.count("fdur", {"lexname": "noun.person"}) == 0
            got = c.search("fdur", corpus["queries"][:4], k=10, filter={"has_example": True},
                           with_payload=True)
            np.testing.assert_array_equal(got.ids, want.ids)
            assert got.payloads == want.payloads
            assert c.describe_collection("fdur").payload_schema["has_example"] == "bool"
        # a clean stop snapshots (payload.bin); the next start reads payloads from it
        server.send_signal(signal.SIGTERM)
        assert server.wait(120) == 0
        server = _start_server(data_dir, port, log)
        with Client(address, timeout=60) as c:
            assert c.count("fdur", {"has_example": True}) == want_count
            got = c.search("fdur", corpus["queries"][:4], k=10, filter={"has_example": True},
                           with_payload=True)
            np.testing.assert_array_equal(got.ids, want.ids)
            assert got.payloads == want.payloads
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except Exception:
                kill9([server.pid] + descendants(server.pid))


def test_set_payload_and_delete_by_filter_race_concurrent_searches(gateway, corpus):
    """Writers flip rows out of a filter (SetPayload) and delete groups by filter while
    searches run: no search returns a row whose change was acknowledged before it began."""
    import threading

    n = 4000
    docs = corpus["docs"][_spread(n)]
    ids = np.arange(n)
    name = f"frace-{uuid.uuid4().hex[:6]}"
    acked: set[int] = set()  # ids out of the filter, acknowledged
    lock = threading.Lock()
    stop = threading.Event()
    errors, checked = [], [0]
    with Client(gateway.address, timeout=60) as c:
        c.create_collection(name, 384, "cosine", shards=2)
        c.upsert(name, ids, docs, payload={"live": ["yes"] * n, "group": (ids % 40).tolist()})

    def writer():
        with Client(gateway.address, timeout=60) as c:
            for g in range(20):  # groups 0..19: half flipped by SetPayload, half deleted
                batch = ids[ids % 40 == g]
                if g % 2:
                    c.set_payload(name, batch, {"live": ["no"] * batch.size})
                else:
                    assert c.delete(name, filter={"group": g}) == batch.size
                with lock:
                    acked.update(batch.tolist())
        stop.set()

    def searcher(seed):
        rng = np.random.default_rng(seed)
        with Client(gateway.address, timeout=60) as c:
            while not stop.is_set():
                with lock:
                    before = set(acked)
                q = docs[rng.integers(0, n, 4)]
                res = c.search(name, q, k=20, dim=64, filter={"live": "yes"})
                bad = before & set(res.ids.ravel().tolist())
                if bad:
                    errors.append(sorted(bad)[:5])
                checked[0] += 1

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join(120)
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert checked[0] > 20, checked  # the searches really overlapped the writes
        with Client(gateway.address) as c:
            assert c.count(name, {"live": "yes"}) == n - n // 2
            assert c.count(name) == n - n // 4
    finally:
        with Client(gateway.address) as c:
            c.drop_collection(name)


def test_ray_jobs_filter_through_the_coordinator(coordinator, corpus):
    """The coordinator a Ray job gets from nestvec.cluster.connect() takes the SDK's forms:
    payload rows as dicts, filters as Mongo-style dicts."""
    rows, docs = _rows(2000), corpus["docs"][_spread(2000)]
    name = f"fjob-{uuid.uuid4().hex[:6]}"
    coordinator.create_collection(name, 384, "cosine", shards=2)
    try:
        coordinator.upsert(name, np.arange(2000), docs, payload=rows)
        f = {"pos": {"$in": ["verb", "adv"]}, "gloss_chars": {"$lt": 80}}
        mask = np.array([_matches(r, f) for r in rows])
        assert 0 < mask.sum() < 2000 and coordinator.count(name, f) == mask.sum()
        q = corpus["queries"][:3]
        res = coordinator.search(name, q, k=10, dim=128, filter=f, with_payload=True)
        assert_matches_oracle(res.ids, res.scores, np.arange(2000)[mask], docs[mask], q, "cosine", 128, 10)
        assert set(res.payload) >= {"pos", "gloss_chars"}
    finally:
        coordinator.drop_collection(name)


@pytest.mark.parametrize("graph", ["hnsw", "hnsw_sq8"])
def test_filtered_ann_returns_only_matching_rows_at_high_recall(client, corpus, graph):
    """ANN with a filter: the planner walks the graph (oversampled by 1/selectivity; the
    8-bit graph with the filter inside its walk above 30%) or scans the matching rows;
    never a non-matching or deleted id, recall@10 >= 0.95 against the filtered exact
    answer at every selectivity, and a delete after a filtered walk is seen by the next."""
    n = 12_000
    rows, docs = _rows(n), corpus["docs"][_spread(n)]
    name = f"fann-{uuid.uuid4().hex[:6]}"
    client.create_collection(name, 384, "cosine", shards=2,
                             index={"type": graph, "dim": 128, "m": 16, "ef_construction": 100})
    try:
        client.upsert(name, np.arange(n), docs, payload=rows)
        gone = np.arange(0, n, 9)
        client.delete(name, gone)
        import time
        end = time.monotonic() + 300
        while not client.describe_collection(name).index_ready:
            assert time.monotonic() < end, "index not built"
            time.sleep(0.5)
        alive = np.ones(n, dtype=bool)
        alive[gone] = False
        q = corpus["queries"][:40]
        median = int(np.median([r["gloss_chars"] for r in rows if "gloss_chars" in r]))
        dense = [{"gloss_chars": {"$lt": median}}, {"gloss_chars": {"$gte": median // 2}}]
        for f in FILTERS[:9] + dense:
            mask = np.array([_matches(r, f) for r in rows]) & alive
            res = client.search(name, q, k=10, ann=True, filter=f)
            exact = client.search(name, q, k=10, filter=f)
            assert res.ids.shape == exact.ids.shape
            got = set(res.ids.ravel().tolist())
            assert got <= set(np.flatnonzero(mask).tolist()), f  # matching, live rows only
            if mask.sum():
                hits = sum(len(set(a) & set(b)) for a, b in zip(res.ids.tolist(), exact.ids.tolist()))
                assert hits / exact.ids.size >= 0.95, (f, hits / exact.ids.size)
        # Delete what a dense filtered walk just returned: the next walk never returns it
        f = dense[0]
        first = client.search(name, q, k=10, ann=True, filter=f).ids
        client.delete(name, np.unique(first))
        again = client.search(name, q, k=10, ann=True, filter=f).ids
        assert not set(again.ravel().tolist()) & set(first.ravel().tolist())
        mask = np.array([_matches(r, f) for r in rows]) & alive
        assert set(again.ravel().tolist()) <= set(np.flatnonzero(mask).tolist())
    finally:
        client.drop_collection(name)
