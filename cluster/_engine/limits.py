"""Request limits: what one call may ask of a gateway. All configurable on `nestvec serve`.

Beyond a size limit a call fails with RESOURCE_EXHAUSTED and a message saying
how to split it; k outside its range is INVALID_ARGUMENT (a bad parameter, not
a big request). The defaults are in docs/security.md.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_k: int = 10_000                    # results per query
    max_candidates: int = 100_000          # funnel shortlist per stage
    max_queries: int = 10_000              # query rows per Search
    max_vectors: int = 100_000             # rows per Upsert message (UpsertStream: per message)
    max_ids: int = 100_000                 # ids per Get or Delete
    max_concurrent: int = 256              # calls in flight per gateway; beyond: RESOURCE_EXHAUSTED at once
    # One gRPC message, either direction. 64 MiB holds the SDK's 16 MiB upsert batches and a
    # 10,000 x 384 float32 query batch (15 MiB) with room; raise it with --max-message-bytes.
    max_message_bytes: int = 64 << 20
    # HTTP/2 flow-control window per call: what gRPC buffers for a call before its
    # handler reads (or refuses) the body. Fixed, not grown by gRPC's bandwidth probe:
    # grown windows let 100 keyless uploads park up to 364 MiB in the gateway before the
    # key check refused them. Raise it for high-latency links (throughput ~ window / RTT).
    stream_window_bytes: int = 64 << 10


DEFAULT_LIMITS = Limits()
