"""Merging what the generators measured into one result (exact: histograms add)."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from nestvec.cluster.loadtest.histogram import Histogram

SATURATED_CPU = 0.9   # a generator process busier than this is itself a bottleneck


@dataclass
class LoadResult:
    mode: str
    duration: float                              # seconds the generators ran (longest)
    window: float                                # seconds per time-series window
    hist: dict[str, Histogram]                   # method -> OK latencies
    windows: dict[str, dict[int, Histogram]]     # method -> window index -> OK latencies
    codes: Counter                               # (method, code) -> calls
    recall_hits: int
    recall_rows: int
    k: int
    query_uses: np.ndarray                       # times each query row was searched (OK calls)
    ledger: dict[str, np.ndarray]
    worker_cpu: list[float]                      # CPU seconds / wall seconds, per generator
    late_sends: int
    max_send_lag: float
    trace: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: list[dict], mode: str, k: int, settings: dict | None = None) -> "LoadResult":
        hist: dict[str, Histogram] = defaultdict(Histogram)
        windows: dict[str, dict[int, Histogram]] = defaultdict(lambda: defaultdict(Histogram))
        codes: Counter = Counter()
        for p in parts:
            for op, h in p["hist"].items():
                hist[op].merge(Histogram.from_dict(h))
            for op, i, h in p["windows"]:
                windows[op][i].merge(Histogram.from_dict(h))
            for op, code, n in p["codes"]:
                codes[(op, code)] += n
        ledger = {key: np.concatenate([p["ledger"][key] for p in parts]).astype(np.uint64)
                  for key in ("acked_upserts", "acked_deletes", "uncertain_upserts", "uncertain_deletes")}
        ledger["delete_found_fewer"] = sum(p["ledger"]["delete_found_fewer"] for p in parts)
        return cls(
            mode=mode, duration=max(p["wall"] for p in parts), window=parts[0]["window"],
            hist=dict(hist), windows={op: dict(w) for op, w in windows.items()}, codes=codes,
            recall_hits=sum(p["recall_hits"] for p in parts),
            recall_rows=sum(p["recall_rows"] for p in parts), k=k,
            query_uses=np.sum([p["query_uses"] for p in parts], axis=0),
            ledger=ledger, worker_cpu=[p["cpu"] / max(p["wall"], 1e-9) for p in parts],
            late_sends=sum(p["late_sends"] for p in parts),
            max_send_lag=max(p["max_send_lag"] for p in parts),
            trace=sorted(t for p in parts for t in p["trace"]), settings=dict(settings or {}))

    # ----- derived figures ----------------------------------------------------------
    @property
    def overall(self) -> Histogram:
        return Histogram.merged(self.hist.values()) if self.hist else Histogram()

    def calls(self, method: str | None = None, code: str | None = None) -> int:
        return sum(n for (op, c), n in self.codes.items()
                   if (method is None or op == method) and (code is None or c == code))

    @property
    def errors(self) -> dict[str, int]:
        out: Counter = Counter()
        for (_, code), n in self.codes.items():
            if code != "OK":
                out[code] += n
        return dict(out)

    @property
    def throughput(self) -> float:
        return self.calls(code="OK") / self.duration if self.duration else 0.0

    @property
    def recall(self) -> float | None:
        return self.recall_hits / (self.recall_rows * self.k) if self.recall_rows else None

    @property
    def saturated(self) -> bool:
        return any(c >= SATURATED_CPU for c in self.worker_cpu)

    def warnings(self) -> list[str]:
        out = []
        if self.saturated:
            out.append(f"a load generator process used {max(self.worker_cpu):.0%} of a core: the "
                       "generator may be the bottleneck; add --workers or spread it with --ray-address")
        sent = self.calls()
        if self.mode == "open" and sent and self.late_sends > 0.01 * sent:
            why = ("its in-flight cap or its own CPU" if self.saturated else
                   "the in-flight cap, or a busy host (the generators' own CPU was low: on a machine "
                   "shared with the server, the server's threads delay the generators' loops)")
            out.append(f"{self.late_sends} of {sent} calls left more than 10 ms after their intended "
                       f"time (worst {self.max_send_lag * 1000:.0f} ms); likely cause: {why}. Their "
                       "latencies still count from the intended times")
        return out

    def summary(self) -> dict:
        """Everything the table and the JSON show."""
        def stats(h: Histogram) -> dict:
            return {"count": h.count, "mean_ms": h.mean * 1e3 if h.count else None,
                    **{f"p{p:g}_ms": h.percentile(p) * 1e3 if h.count else None
                       for p in (50, 90, 99, 99.9)},
                    "max_ms": h.max * 1e3 if h.count else None}
        return {
            "mode": self.mode, "duration_s": self.duration, "throughput_per_s": self.throughput,
            "calls": {f"{op} {code}": n for (op, code), n in sorted(self.codes.items())},
            "errors": self.errors, "latency": stats(self.overall),
            "by_method": {op: stats(h) for op, h in sorted(self.hist.items())},
            "recall_at_k": self.recall, "k": self.k,
            "generator_cpu": self.worker_cpu, "late_sends": self.late_sends,
            "max_send_lag_ms": self.max_send_lag * 1e3,
            "writes": {"acknowledged_upserts": int(self.ledger["acked_upserts"].size),
                       "acknowledged_deletes": int(self.ledger["acked_deletes"].size),
                       "failed_upserts": int(self.ledger["uncertain_upserts"].size),
                       "failed_deletes": int(self.ledger["uncertain_deletes"].size)},
            "warnings": self.warnings(), "settings": self.settings,
        }

    def series(self, method: str | None = None) -> dict[str, np.ndarray]:
        """Per window: time (s), calls/s, p50/p90/p99/max (ms) of OK calls."""
        merged: dict[int, Histogram] = defaultdict(Histogram)
        for op, w in self.windows.items():
            if method is None or op == method:
                for i, h in w.items():
                    merged[i].merge(h)
        idx = sorted(merged)
        col = lambda f: np.array([f(merged[i]) for i in idx])  # noqa: E731
        return {"t": np.array(idx, dtype=float) * self.window,
                "rate": col(lambda h: h.count / self.window),
                **{f"p{p}": col(lambda h, p=p: h.percentile(p) * 1e3) for p in (50, 90, 99)},
                "max": col(lambda h: h.max * 1e3)}
