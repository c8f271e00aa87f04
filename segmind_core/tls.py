"""One TLS context per process for every HTTP client the package makes."""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["shared_tls_context"]


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """Httpx's default TLS settings (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` honoured), built once.

    Loading the CA bundle costs about 20 ms, and a task run makes a Segmind
    client and two input-fetch clients: three loads per image before this was
    shared. An ``SSLContext`` is safe to share between threads.
    """
    return httpx.create_ssl_context()
