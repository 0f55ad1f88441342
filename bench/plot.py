"""Plot bench_engine results: QPS vs prefix dim, engine vs FAISS, one panel per batch size.

    .venv/bin/python bench/plot.py                       # bench/results/bench_engine.json
    .venv/bin/python bench/plot.py --results bench/results/bench_engine_quick.json --out /tmp/x.png

Needs matplotlib (optional: `pip install matplotlib`, part of the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "bench_engine.json"))
    p.add_argument("--out", default=str(REPO / "docs" / "img" / "bench_engine.png"))
    a = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        sys.exit("matplotlib is not installed: pip install matplotlib (or the project's bench extra)")
    r = json.loads(pathlib.Path(a.results).read_text())
    batches = sorted({pt["batch"] for pt in r["points"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 4.4), squeeze=False)
    cfg = r["config"]
    for ax, b in zip(axes[0], batches):
        pts = sorted((pt for pt in r["points"] if pt["batch"] == b), key=lambda pt: pt["dim"])
        dims = [pt["dim"] for pt in pts]
        eng = [pt["engine"]["qps"] for pt in pts]
        fai = [pt["faiss"]["qps"] for pt in pts]
        ax.plot(dims, eng, "o-", color="tab:blue", lw=2, label="nestvec ShardEngine (exact)")
        ax.plot(dims, fai, "s--", color="tab:orange", lw=2, label="FAISS IndexFlatIP (exact)")
        top = max(eng + fai) * 1.35
        for d, pt in zip(dims, pts):  # the ratio above each dim, red where below the 0.8 target
            ratio = pt["ratio"]
            ax.text(d, top, f"{ratio:.2f}x", ha="center", va="bottom", fontsize=9,
                    color="tab:red" if ratio < 0.8 else "tab:blue",
                    fontweight="bold" if ratio < 0.8 else "normal")
        for fp in r.get("funnel", []):
            if fp["batch"] == b:
                ax.plot([cfg["dim"]], [fp["engine_funnel"]["qps"]], "*", ms=13, color="tab:green",
                        label=f"engine funnel {fp['funnel']} (recall {fp['engine_funnel_recall_gt']:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_xlim(dims[0] / 1.3, dims[-1] * 1.3)
        ax.set_xticks(dims)
        ax.set_xticklabels([str(d) for d in dims])
        ax.set_yscale("log")
        lo = min(eng + fai + [fp["engine_funnel"]["qps"] for fp in r.get("funnel", []) if fp["batch"] == b])
        hi = max(eng + fai)
        subs = (1.0, 2.0, 5.0) if hi / lo > 8 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(lo / 1.4, hi * 1.9)
        ax.set_xlabel("prefix dim searched (cosine, re-normalised prefix)")
        ax.set_ylabel("queries / second (higher is better)")
        ax.set_title(f"batch {b} (numbers: engine/FAISS QPS ratio)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Exact top-{cfg['k']} on corpusA ({cfg['docs']:,} x {cfg['dim']}), {cfg['threads']} thread{'s' if cfg['threads'] != 1 else ''} for both, "
                 f"{r['machine']['cores']}-core shared machine", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
