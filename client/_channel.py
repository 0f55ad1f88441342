"""Channel set-up shared by Client and AsyncClient: TLS, API key, message size."""
from __future__ import annotations

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


def auth_metadata(api_key: str | None) -> tuple:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()
