"""Soak: hold a mixed read/write load on a durable server, then prove no acknowledged write was lost.

On demand (not part of the test suite):

    .venv/bin/python bench/soak.py                      # 1,000 clients, 10 minutes
    .venv/bin/python bench/soak.py --clients 200 --duration 60   # a quick rehearsal

What it does:
1. starts `nestvec serve --data-dir DIR --fsync always` (durability on) on a free
   loopback port, with --max-concurrent above the client count;
2. loads corpusA's docs (ids 0..n-1) and holds a closed-loop load of --clients
   concurrent clients (searches, plus upserts of fresh ids and deletes of
   acknowledged ones) from --workers generator processes for --duration seconds;
3. checks the server against the generators' ledger of acknowledged writes:
   every live acknowledged id present, every acknowledged delete absent, a
   sample of vectors equal to what was written, and the exact count;
4. kills the whole server (kill -9: gateway, Ray, shard workers), restarts it on
   the same data directory, and runs the same check again.
Writes bench/results/soak.json and docs/img/soak.png; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

from nestvec.client import Client  # noqa: E402
from nestvec.cluster.loadtest import report, runner  # noqa: E402
from nestvec.cluster.loadtest.generator import Connection, Plan  # noqa: E402
from nestvec.cluster.loadtest.verify import verify_ledger  # noqa: E402
from nestvec.cluster.loadtest.workload import QuerySet, Workload  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "corpusA" / "embeddings.npz"

sys.path.insert(0, str(REPO / "bench"))
from _common import free_port  # noqa: E402


def tree(pid: int) -> list[int]:
    """pid and all its descendants (gateway, raylet, GCS, shard workers), from /proc."""
    kids: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                stat = open(f"/proc/{e}/stat").read()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(e))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kill_tree(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_server(args, data_dir: str, port: int, log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--port", str(port),
           "--data-dir", data_dir, "--fsync", "always", "--shards", str(args.shards),
           "--max-concurrent", str(args.clients * 2 + 100), "--namespace", f"soak-{port}"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"server exited: {open(log_path).read()[-3000:]}")
        try:
            with Client(address, timeout=2) as c:
                c.list_collections()
            return proc
        except Exception:
            time.sleep(0.5)
    kill_tree(tree(proc.pid))
    sys.exit("server did not start in 300 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--docs", type=int, default=100_000, help="corpusA docs loaded before the soak")
    ap.add_argument("--write-ratio", type=float, default=0.2)
    ap.add_argument("--delete-ratio", type=float, default=0.25)
    ap.add_argument("--write-batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64, help="search prefix dim")
    ap.add_argument("--funnel", default="", help="DIM:CANDIDATES,... (default: none)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--data-dir", default=None, help="server data dir (default: a temp dir, removed after)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "soak.png"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="nestvec-soak-")
    data_dir = args.data_dir or os.path.join(tmp, "data")
    log_path = os.path.join(tmp, "server.log")
    port = free_port()
    address = f"127.0.0.1:{port}"
    name = "soak"
    print(f"server log: {log_path}; data dir: {data_dir}", flush=True)
    t_start = time.time()
    server = start_server(args, data_dir, port, log_path)
    try:
        z = np.load(args.data)
        docs = z["docs"][: args.docs].astype(np.float32)
        queries = QuerySet(z["queries"].astype(np.float32))
        with Client(address, timeout=600) as c:
            c.create_collection(name, dim=docs.shape[1], metric="cosine")
            for s in range(0, docs.shape[0], 10_000):
                c.upsert(name, np.arange(s, min(s + 10_000, docs.shape[0])), docs[s: s + 10_000])
            count_before = c.describe_collection(name).vectors
        print(f"loaded {count_before} vectors; soaking {args.clients} clients for {args.duration:.0f} s",
              flush=True)
        funnel = [tuple(int(x) for x in st.split(":")) for st in args.funnel.split(",") if st]
        wl = Workload(collection=name, k=10, dim=args.dim, funnel=funnel, write_ratio=args.write_ratio,
                      delete_ratio=args.delete_ratio, write_batch=args.write_batch, timeout=60, seed=1)
        plan = Plan(mode="closed", concurrency=args.clients, duration=args.duration,
                    window=max(1.0, args.duration / 120), progress_every=10.0)
        res = runner.run_local(Connection(address), wl, queries, plan, args.workers)
        print(report.table(res), flush=True)
        with Client(address, timeout=600) as c:
            live_check = verify_ledger(c, name, res.ledger, count_before, seed=1)
        print("live server " + live_check.text(), flush=True)

        victims = tree(server.pid)
        print(f"kill -9 the server ({len(victims)} processes) and restart it on {data_dir}", flush=True)
        kill_tree(victims)
        server.wait(30)
        t0 = time.monotonic()
        server = start_server(args, data_dir, port, log_path)
        restart_s = time.monotonic() - t0
        with Client(address, timeout=600) as c:
            restart_check = verify_ledger(c, name, res.ledger, count_before, seed=1)
        print(f"after kill -9 and restart ({restart_s:.0f} s) " + restart_check.text(), flush=True)

        ok = live_check.ok and restart_check.ok
        extra = {"soak": {"clients": args.clients, "docs_loaded": count_before, "machine_cpus": os.cpu_count(),
                          "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_start)),
                          "fsync": "always", "restart_s": restart_s,
                          "verification_live": {**live_check.__dict__, "ok": live_check.ok},
                          "verification_after_restart": {**restart_check.__dict__, "ok": restart_check.ok}}}
        report.write_json(res, args.out, extra)
        report.plot(res, args.plot, f"soak: {args.clients} closed-loop clients, {args.duration:.0f} s, "
                                    f"{args.write_ratio:.0%} writes, fsync always; "
                                    f"lost writes: {live_check.live_missing + restart_check.live_missing}")
        print(f"wrote {args.out} and {args.plot}; soak {'PASSED' if ok else 'FAILED'}", flush=True)
        return 0 if ok else 1
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                kill_tree(tree(server.pid))
        if not args.data_dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
