"""TLS settings and the rule for what a server may expose.

The rule: a server with no API keys listens on loopback only, and binding any
other address needs both keys and TLS, unless the operator says `--insecure`
(for a private network they trust). Pure Python apart from building gRPC's
credential object.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import grpc


DEFAULT_HOST = "127.0.0.1"  # loopback only unless the operator asks otherwise
DEFAULT_PORT = 50051


class ExposureRefused(Exception):
    pass


@dataclass(frozen=True)
class TlsConfig:
    cert_chain: bytes              # PEM: the server's certificate (and intermediates)
    private_key: bytes             # PEM
    client_ca: bytes | None = None  # PEM: if set, clients must present a certificate it signed (mTLS)

    @staticmethod
    def from_files(cert: str, key: str, client_ca: str | None = None) -> "TlsConfig":
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        return TlsConfig(read(cert), read(key), read(client_ca) if client_ca else None)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)],
                                           root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable from outside


def check_exposure(host: str, has_keys: bool, tls: TlsConfig | None, insecure: bool) -> list[str]:
    """Refuse an unsafe binding (ExposureRefused); return warnings to print for an allowed one."""
    if is_loopback(host):
        return [] if has_keys else [
            "no API keys configured: any local process can read and write; listening on "
            f"loopback ({host}) only"]
    missing = [what for what, ok in (("API keys", has_keys), ("TLS", tls is not None)) if not ok]
    if missing and not insecure:
        raise ExposureRefused(
            f"refusing to listen on {host} without {' and '.join(missing)}: configure them "
            "(--api-keys-file or NESTVEC_API_KEYS; --tls-cert/--tls-key), listen on 127.0.0.1, "
            "or pass --insecure if this network is trusted")
    return [f"listening on {host} without {' and '.join(missing)} (--insecure)"] if missing else []
