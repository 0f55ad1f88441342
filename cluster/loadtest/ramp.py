"""Knee finding: raise the open-loop rate step by step until p99 passes a bound.

Each step is a full open-loop run (latency from intended send times). A step
passes when its p99 is within the bound, fewer than `max_error_fraction` of
calls failed, and the server kept up (completions per second, counting the
time to drain the calls in flight at the end, >= 90% of the arrivals sent).
After the first failing step the gap to the last passing one is bisected
`refine` times. The answer is the highest rate that passed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Callable, TextIO

from nestvec.cluster.loadtest.generator import Plan
from nestvec.cluster.loadtest.results import LoadResult


@dataclass
class RampResult:
    bound_ms: float
    steps: list[dict] = field(default_factory=list)
    knee_rate: float | None = None     # highest offered rate that passed
    knee: LoadResult | None = None     # that step's full result

    def summary(self) -> dict:
        return {"p99_bound_ms": self.bound_ms, "knee_rate": self.knee_rate, "steps": self.steps}


def step_summary(rate: float, res: LoadResult, bound_ms: float, max_error_fraction: float) -> dict:
    s = res.summary()
    calls = res.calls()
    err = (calls - res.calls(code="OK")) / calls if calls else 1.0
    p99 = s["latency"]["p99_ms"]
    reasons = []
    if p99 is None or p99 > bound_ms:
        reasons.append(f"p99 {p99 if p99 is None else round(p99, 1)} ms > {bound_ms:g} ms")
    if err > max_error_fraction:
        reasons.append(f"{err:.1%} errors")
    # kept up: completions per second of the run (drain included) against the arrivals the
    # Poisson process actually drew (not the nominal rate, which a short step misses by chance)
    sent_rate = calls / res.settings.get("duration_s", res.duration) if calls else rate
    if res.throughput < 0.9 * sent_rate:
        reasons.append(f"achieved {res.throughput:.0f}/s < 90% of the {sent_rate:.0f}/s sent")
    return {"rate": rate, "throughput": res.throughput, "p50_ms": s["latency"]["p50_ms"],
            "p99_ms": p99, "max_ms": s["latency"]["max_ms"], "error_fraction": err,
            "generator_cpu": max(res.worker_cpu), "passed": not reasons, "why_not": "; ".join(reasons)}


def find_knee(run_step: Callable[[Plan], LoadResult], plan: Plan, start_rate: float, factor: float,
              bound_ms: float, max_rate: float = 1e6, refine: int = 2,
              max_error_fraction: float = 0.001, out: TextIO | None = sys.stderr) -> RampResult:
    """`run_step(plan)` runs one open-loop step; `plan` gives duration and in-flight cap."""
    if factor <= 1:
        raise ValueError("the ramp factor must be > 1")
    ramp = RampResult(bound_ms)

    def step(rate: float) -> bool:
        res = run_step(replace(plan, mode="open", rate=rate))
        row = step_summary(rate, res, bound_ms, max_error_fraction)
        ramp.steps.append(row)
        if out is not None:
            print(f"ramp: {rate:8.1f}/s offered -> {row['throughput']:8.1f}/s, p50 {row['p50_ms'] or 0:.1f} ms, "
                  f"p99 {row['p99_ms'] or 0:.1f} ms: " + ("ok" if row["passed"] else "FAIL (" + row["why_not"] + ")"),
                  file=out, flush=True)
        if row["passed"] and (ramp.knee_rate is None or rate > ramp.knee_rate):
            ramp.knee_rate, ramp.knee = rate, res
        return row["passed"]

    rate, good, bad = start_rate, None, None
    while rate <= max_rate:
        if not step(rate):
            bad = rate
            break
        good = rate
        rate *= factor
    if good is not None and bad is not None:
        for _ in range(refine):
            mid = (good + bad) / 2
            if step(mid):
                good = mid
            else:
                bad = mid
    ramp.steps.sort(key=lambda r: r["rate"])
    return ramp
