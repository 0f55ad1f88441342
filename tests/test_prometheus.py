"""The operator's view, checked against the real thing: a real Prometheus scrapes a real
`nestvec serve`, every query of the Grafana dashboard (deploy/grafana/nestvec.json)
returns data through Prometheus's HTTP API, and the alert rules
(deploy/prometheus/alerts.yml) parse, load, fire when they should (`promtool test
rules`) and stay quiet on a healthy server.

Prometheus comes from Debian's `prometheus` package (.ci/run installs it). Where it is
missing these tests skip saying so, unless NESTVEC_REQUIRE_PROMETHEUS=1 (CI sets it),
when they fail.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from nestvec.client import AsyncClient, Client
from nestvec.errors import NestvecError
from proc_util import descendants, free_port, kill9
from test_crash import _wait_serving

from conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "nestvec.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
NESTVEC = [sys.executable, "-m", "nestvec.cluster._ops.cli"]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
# Grafana's variables, as the dashboard's "All" choices expand them.
SUBSTITUTE = {"$__rate_interval": "30s", "$instance": ".*", "$collection": ".*"}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("NESTVEC_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def family(name: str) -> str:
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:nestvec|process)_[a-z_]+)\b", expr))


# ----- the files themselves ---------------------------------------------------------------
def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "instance", "collection"}
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        boxes.append((g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"], p["title"]))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], f"panel {p['title']!r} queries nothing"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), p["title"]
            for var in re.findall(r"\$\w+", t["expr"]):
                assert var in SUBSTITUTE, f"{p['title']}: unknown variable {var}"
    for i, a in enumerate(boxes):  # no two panels overlap on the grid
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a[4], b[4])
    covered = {family(m) for _, e in dashboard_queries() for m in metric_names(e)}
    for needed in ("nestvec_requests", "nestvec_request_seconds", "nestvec_shard_vectors",
                   "nestvec_shard_rss_bytes", "process_resident_memory_bytes", "nestvec_shard_wal_bytes",
                   "nestvec_shard_restarts", "nestvec_shard_index_state", "nestvec_search_batch_rows"):
        assert needed in covered, needed  # what the issue asked the dashboard to show


def test_alert_rules_parse_and_fire_as_specified():
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 10 rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True,
                          cwd=ALERTS_TEST.parent)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    # Each alert has a firing case in the unit tests (a rule nothing exercises is untested).
    names = set(re.findall(r"^\s+- alert: (\w+)", ALERTS.read_text(), flags=re.M))
    tested = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", ALERTS_TEST.read_text()))
    assert names and names == tested, names ^ tested


# ----- a real Prometheus scraping a real server ---------------------------------------------
class _Prometheus:
    def __init__(self, tmp_path, metrics_port: int):
        binary = _tool("prometheus")
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ALERTS}']\n"
            "scrape_configs:\n"
            "  - job_name: nestvec\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(self.url("/-/ready"), timeout=2).status == 200:
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise AssertionError("prometheus did not start: " + self.log_text())
                time.sleep(0.3)

    def url(self, path: str, **params) -> str:
        q = ("?" + urllib.parse.urlencode(params)) if params else ""
        return f"http://127.0.0.1:{self.port}{path}{q}"

    def api(self, path: str, **params):
        body = json.loads(urllib.request.urlopen(self.url("/api/v1/" + path, **params), timeout=30).read())
        assert body["status"] == "success", body
        return body["data"]

    def log_text(self) -> str:
        self.log.flush()
        return open(self.log.name, errors="replace").read()[-3000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _traffic(address: str, name: str, queries: np.ndarray, stop: threading.Event) -> dict:
    """Concurrent searches (so the batcher stacks them), ANN and funnel searches, and
    callers' mistakes, until `stop`; returns counts per outcome."""
    counts = {"ok": 0, "invalid": 0}

    async def run():
        clients = [AsyncClient(address, timeout=60) for _ in range(8)]
        try:
            while not stop.is_set():
                calls = [c.search(name, queries[i % len(queries)], k=10) for i, c in enumerate(clients)]
                calls.append(clients[0].search(name, queries[:4], k=10, dim=64, ann=True))
                calls.append(clients[1].search(name, queries[:4], k=10, dim=64, funnel=[(64, 40)]))
                calls.append(clients[2].search(name, queries[0], k=0))  # INVALID_ARGUMENT
                for r in await asyncio.gather(*calls, return_exceptions=True):
                    if isinstance(r, NestvecError):
                        assert r.code == "INVALID_ARGUMENT", r
                        counts["invalid"] += 1
                    elif isinstance(r, BaseException):
                        raise r
                    else:
                        counts["ok"] += 1
                await asyncio.sleep(0.05)
        finally:
            await asyncio.gather(*[c.close() for c in clients])

    asyncio.run(run())
    return counts


def test_real_prometheus_scrapes_every_dashboard_query(tmp_path, corpus):
    _tool("prometheus")
    port, metrics_port = free_port(), free_port()
    address, log = f"127.0.0.1:{port}", str(tmp_path / "serve.log")
    with open(log, "wb") as f:
        server = subprocess.Popen(NESTVEC + ["serve", "--port", str(port), "--metrics-port", str(metrics_port),
                                             "--data-dir", str(tmp_path / "data"), "--shards", "2",
                                             "--namespace", f"prom-{port}"],
                                  stdout=f, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    prom = None
    try:
        _wait_serving(address, server, log)
        name, docs, queries = "prom", corpus["docs"][:4000], corpus["queries"][:64]
        with Client(address, timeout=120) as c:
            c.create_collection(name, dim=384, metric="cosine",
                                index={"type": "hnsw", "dim": 64, "m": 8, "ef_construction": 40})
            c.upsert(name, np.arange(len(docs)), docs)
            c.delete(name, np.arange(10))  # tombstones
            end = time.monotonic() + 120
            while any(s.index_state != "ready" for s in c.describe_collection(name).shard_info):
                assert time.monotonic() < end, "index not built"
                time.sleep(0.5)
        prom = _Prometheus(tmp_path, metrics_port)
        stop = threading.Event()
        result = {}
        worker = threading.Thread(target=lambda: result.update(_traffic(address, name, queries, stop)))
        worker.start()
        try:
            time.sleep(8)  # several scrapes while traffic flows: rates need two samples in their window
            targets = prom.api("targets")["activeTargets"]
            assert [t["health"] for t in targets] == ["up"], targets
            # Every metric the dashboard draws exists, and every query returns data now.
            exported = set(prom.api("label/__name__/values"))
            for title, expr in dashboard_queries():
                missing = metric_names(expr) - exported
                assert not missing, f"{title}: {missing} not exported"
                promql = expr
                for var, value in SUBSTITUTE.items():
                    promql = promql.replace(var, value)
                series = prom.api("query", query=promql)["result"]
                values = [float(s["value"][1]) for s in series]
                assert any(math.isfinite(v) for v in values), f"{title}: {promql} -> {series}"
        finally:
            stop.set()
            worker.join(60)
        assert result["ok"] > 50 and result["invalid"] > 5, result
        # What Prometheus holds is what was served.
        vectors = prom.api("query", query=f'sum(nestvec_shard_vectors{{collection="{name}"}})')["result"]
        assert float(vectors[0]["value"][1]) == len(docs) - 10
        ready = prom.api("query", query=f'sum(nestvec_shard_index_state{{collection="{name}",state="ready"}})')
        assert float(ready["result"][0]["value"][1]) == 2
        bad = prom.api("query", query='sum(nestvec_requests_total{method="Search",code="INVALID_ARGUMENT"})')
        assert 0 < float(bad["result"][0]["value"][1]) <= result["invalid"]
        # Every nestvec metric family the server exports has a place on the dashboard.
        drawn = {family(m) for _, e in dashboard_queries() for m in metric_names(e)}
        undrawn = {family(m) for m in exported if m.startswith("nestvec_")} - drawn
        assert not undrawn, f"exported but on no panel: {undrawn}"
        # The alert rules loaded, evaluate without error, and none fires on a healthy server.
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == 10 and all(r["health"] == "ok" for r in rules), rules
        firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
        assert not firing, firing
    finally:
        if prom is not None:
            prom.stop()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            pass
        if server.poll() is None:
            kill9([server.pid] + descendants(server.pid))
