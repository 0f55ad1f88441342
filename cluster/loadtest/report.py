"""What a load test shows: the end table, the JSON, and the PNG."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from nestvec.cluster.loadtest.results import LoadResult


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(res: LoadResult) -> str:
    s = res.summary()
    st = s["settings"]
    what = (f"{st.get('clients')} clients (closed loop)" if res.mode == "closed"
            else f"{st.get('rate'):.0f}/s Poisson arrivals (open loop, at most {st.get('max_in_flight')} in flight)")
    lines = [f"{what}, {s['duration_s']:.1f} s, {st.get('generators')} generator "
             f"{st.get('generator_kind')}; k={st.get('k')} dim={st.get('dim') or 'full'} "
             f"batch={st.get('batch')}" + (f" funnel={st.get('funnel')}" if st.get("funnel") else ""),
             "",
             f"{'method':<8} {'calls':>9} {'mean':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9}  (ms, OK calls)"]
    rows = list(s["by_method"].items()) + ([("all", s["latency"])] if len(s["by_method"]) > 1 else [])
    for op, h in rows:
        lines.append(f"{op:<8} {h['count']:>9} {_ms(h['mean_ms']):>8} {_ms(h['p50_ms']):>8} "
                     f"{_ms(h['p90_ms']):>8} {_ms(h['p99_ms']):>8} {_ms(h['p99.9_ms']):>8} {_ms(h['max_ms']):>9}")
    lines += ["", f"throughput: {s['throughput_per_s']:.1f} OK calls/s"]
    lines.append("errors: " + (", ".join(f"{c} {n}" for c, n in sorted(s["errors"].items())) or "none"))
    if s["recall_at_k"] is not None:
        lines.append(f"recall@{s['k']}: {s['recall_at_k']:.4f} (over {res.recall_rows} query rows)")
    w = s["writes"]
    if any(w.values()):
        lines.append(f"writes: {w['acknowledged_upserts']} ids upserted, {w['acknowledged_deletes']} deleted "
                     f"(acknowledged); {w['failed_upserts'] + w['failed_deletes']} in failed calls")
    lines.append("generator CPU per process: " + ", ".join(f"{c:.0%}" for c in s["generator_cpu"]))
    lines += [f"WARNING: {msg}" for msg in s["warnings"]]
    return "\n".join(lines)


def write_json(res: LoadResult, path: str | pathlib.Path, extra: dict | None = None) -> None:
    body = res.summary()
    body["series"] = {k: v.tolist() for k, v in res.series().items()}
    body["histogram"] = res.overall.to_dict()
    body.update(extra or {})
    pathlib.Path(path).write_text(json.dumps(body, indent=1, default=_jsonable) + "\n")


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def plot(res: LoadResult, path: str | pathlib.Path, title: str = "") -> None:
    """Latency percentiles over time (with throughput) and the latency histogram."""
    plt = _pyplot()

    from matplotlib.ticker import ScalarFormatter

    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(13, 4.6))
    ser = res.series()
    if ser["t"].size:
        mid = ser["t"] + res.window / 2
        for key, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("max", ":")):
            ax_t.plot(mid, ser[key], style, label=key)
        ax_t.set_yscale("log")
        ax_t.yaxis.set_major_formatter(ScalarFormatter())
        ax_r = ax_t.twinx()
        ax_r.plot(mid, ser["rate"], color="grey", alpha=0.4, label="OK calls/s")
        ax_r.set_ylabel("OK calls/s (grey)")
        ax_r.set_ylim(bottom=0)
    ax_t.set_xlabel(f"time since start (s; {res.window:g} s windows, by intended send time)")
    ax_t.set_ylabel("latency (ms)")
    ax_t.legend(loc="upper left")
    ax_t.set_title("latency over time")
    ax_t.grid(alpha=0.3, which="both")

    for op, h in sorted(res.hist.items()):
        x, n = h.nonzero_buckets()
        if x.size:
            ax_h.step(x * 1e3, n, where="mid", label=f"{op} ({h.count} calls)")
    ax_h.set_xscale("log")
    ax_h.xaxis.set_major_formatter(ScalarFormatter())
    ax_h.set_xlabel("latency (ms, log buckets of +-1%)")
    ax_h.set_ylabel("calls")
    ax_h.set_title("latency histogram")
    ax_h.legend()
    ax_h.grid(alpha=0.3, which="both")
    s = res.summary()
    fig.suptitle(title or f"nestvec loadtest: {res.mode} loop, {s['throughput_per_s']:.0f} calls/s, "
                 f"p99 {_ms(s['latency']['p99_ms'])} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ramp(steps: list[dict], path: str | pathlib.Path, bound_ms: float, title: str = "") -> None:
    """p50/p99 and achieved throughput against the offered open-loop rate."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.6))
    rate = [s["rate"] for s in steps]
    ax.plot(rate, [s["p50_ms"] for s in steps], "o-", label="p50")
    ax.plot(rate, [s["p99_ms"] for s in steps], "o-", label="p99")
    ax.axhline(bound_ms, color="red", ls="--", label=f"p99 bound {bound_ms:g} ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("offered rate (calls/s, Poisson)")
    ax.set_ylabel("latency (ms)")
    ax2 = ax.twinx()
    ax2.plot(rate, [s["throughput"] for s in steps], "s--", color="grey", alpha=0.6, label="achieved")
    ax2.set_ylabel("achieved OK calls/s (grey)")
    ax2.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "open-loop ramp")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a clear error without it."""
    try:
        import matplotlib
    except ImportError:
        raise OSError("--plot needs matplotlib: pip install 'nestvec[loadtest]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
