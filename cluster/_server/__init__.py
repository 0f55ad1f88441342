"""Layer 4, the gRPC server: no math here.

gateway (the VectorSearch servicer: validation, errors to status codes), serve
(assembling Ray, the coordinator and the grpc.aio server), auth (API keys and
roles), security (TLS and the loopback-only rule), metrics (Prometheus),
gateway_replicas (N gateway actors on one port).

May import: layers 1-3 and `nestvec.v1`. Internal: no stability promise.
"""
