"""Channel set-up shared by Client and AsyncClient: TLS, API key, message size."""
from __future__ import annotations

import ipaddress
import warnings

import grpc

MAX_MESSAGE_BYTES = 256 << 20


def make_channel(address: str, *, aio: bool, tls: bool, root_certificates: bytes | None,
                 client_certificate: bytes | None, client_key: bytes | None, options: list | None):
    """A plaintext channel, or TLS when `tls` or any certificate is given.

    root_certificates: PEM CA that signed the server's certificate (None: the
    system's trust store). client_certificate/client_key: for mutual TLS.
    """
    opts = list(options or []) + [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    mod = grpc.aio if aio else grpc
    if tls or root_certificates or client_certificate:
        creds = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
        return mod.secure_channel(address, creds, options=opts)
    return mod.insecure_channel(address, options=opts)


class PlaintextKeyWarning(UserWarning):
    """An API key is about to travel unencrypted to a host that is not this machine."""


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    host = host.split("://")[-1]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def warn_if_plaintext_key(address: str, api_key: str | None, tls: bool, root_certificates,
                          client_certificate) -> None:
    """Say so when a key would go over plaintext to another host (anyone on the path can
    read and replay it); loopback is exempt, as the server's own rule is."""
    if api_key and not (tls or root_certificates or client_certificate) and not _is_loopback(address):
        warnings.warn(f"sending an API key to {address} without TLS: anyone on the network path "
                      "can read and replay it; pass tls=True (or root_certificates=...)",
                      PlaintextKeyWarning, stacklevel=3)


def auth_metadata(api_key: str | None) -> tuple:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()
