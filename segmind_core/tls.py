"""One TLS context per thread for the HTTP clients the package makes."""

from __future__ import annotations

import ssl
import threading

import httpx

__all__ = ["shared_tls_context"]

_per_thread = threading.local()


def shared_tls_context() -> ssl.SSLContext:
    """Httpx's default TLS settings, built once per thread (not once per client).

    Loading the CA bundle costs about 20 ms, and a task run makes a Segmind
    client and two input-fetch clients: three loads per image before this was
    kept. Per thread, not per process: httpcore sets the ALPN protocols on the
    context for every new connection, which must not race another thread's
    handshake. ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are read when a thread
    first builds its context.
    """
    context: ssl.SSLContext | None = getattr(_per_thread, "context", None)
    if context is None:
        context = httpx.create_ssl_context()
        _per_thread.context = context
    return context
