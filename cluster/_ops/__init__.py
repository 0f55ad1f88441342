"""Layer 5, operator and data-team entry points.

cli (the `nestvec` command), demo (and its shipped sample/), status (`nestvec
status`), bulk (Ray Data ingest and batch search).

May import: every layer below, `nestvec.client`, `nestvec.cluster.loadtest`.
Internal: no stability promise; the CLI is the public face.
"""
