"""Fetch safety: what the worker reads itself, from where, how much and for how long.

Every HTTP server here listens on 127.0.0.1 and every fetch is made with a
policy built in the test. Private, link-local and other non-public addresses
are tested on the address check itself (`check_address`, `InputPolicy.addresses`
with a stub resolver): an autouse guard refuses, and records, any DNS lookup
of a name and any connection to an address outside 127.0.0.0/8, so a test that
would reach one fails instead of reaching it.
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import ImageFile

from segmind_core.errors import PermanentError
from segmind_core.fetch import (
    ALLOW_NETWORKS_ENV,
    INPUT_ROOTS_ENV,
    MAX_BYTES_ENV,
    TIMEOUT_ENV,
    FetchRefusedError,
    InputPolicy,
    check_address,
    display_url,
    fetch_http,
)
from segmind_core.images import InvalidInputImageError, read_image_input, resolve_image
from tests.support import file_server, image_bytes

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
ALLOW_127_0_0_1 = (ipaddress.ip_network("127.0.0.1/32"),)
PNG = image_bytes(size=(64, 48))

# Secrets placed in URLs: no error message may contain them.
SIGNATURE = "SECRETSIG0123"
PASSWORD = "PASSWORD4567"  # noqa: S105 - test value
USER = "aliceuser"


def loopback_policy(**changes: Any) -> InputPolicy:
    """A policy allowing 127.0.0.1 only, with ``changes``."""
    return InputPolicy(allowed_networks=ALLOW_127_0_0_1, **changes)


# -- the guard: nothing outside 127.0.0.0/8, no DNS ------------------------------------


def _is_loopback_literal(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]) in LOOPBACK
    except ValueError:
        return False


@dataclass
class NetworkGuard:
    """What the code under test tried and the guard refused."""

    refused: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
    """Refuse (and record) name lookups and connections outside 127.0.0.0/8."""
    guard = NetworkGuard()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback_literal(host):
            guard.refused.append(f"lookup {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "the tests look up no names")
        return real_getaddrinfo(host, port, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback_literal(host):
            guard.refused.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"the tests connect to 127.0.0.0/8 only, not {address}")
        real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return guard


@dataclass
class StubResolver:
    """A resolver answering from a table, recording each question."""

    answers: Mapping[str, list[str]]
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


def no_lookups(host: str, port: int) -> list[str]:
    """A resolver for tests where no name may be looked up."""
    raise AssertionError(f"the resolver was asked for {host}:{port}")


# -- a scripted loopback HTTP server ---------------------------------------------------

Write = Callable[[bytes], object]
Responder = Callable[[Write, threading.Event], None]


@dataclass
class ScriptedServer:
    """A loopback server answering each path with a responder."""

    url: str
    port: int
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@contextmanager
def scripted_server(routes: Mapping[str, Responder]) -> Iterator[ScriptedServer]:
    """Serve ``routes`` (path without query -> responder) on 127.0.0.1.

    A responder writes the raw response itself (status line, headers, body),
    so it can send chunked bodies, lie about Content-Length or send slowly.
    It is given an event set when the server stops, so a slow or silent
    responder ends with the test. Each request is recorded with its Host
    header before it is answered.
    """
    stop = threading.Event()
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Host")))
            respond = routes.get(self.path.split("?", 1)[0], send(404, b"not found"))
            self.close_connection = True
            with suppress(OSError):  # the client went away: what a refusing client does
                respond(self.wfile.write, stop)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = int(server.server_address[1])
    # A short poll interval: shutdown() waits for the serve loop's next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    scripted = ScriptedServer(url=f"http://127.0.0.1:{port}", port=port, requests=seen)
    try:
        yield scripted
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send(
    status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> Responder:
    """A plain response with a correct Content-Length."""

    def respond(write: Write, stop: threading.Event) -> None:
        all_headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        all_headers.setdefault("Content-Length", str(len(body)))
        write(_head(status, all_headers) + body)

    return respond


def redirect(location: str, status: int = 302) -> Responder:
    """A redirect to ``location``."""
    return send(status, b"", {"Location": location})


def chunked(*chunks: bytes) -> Responder:
    """A 200 with a chunked body (no Content-Length)."""

    def respond(write: Write, stop: threading.Event) -> None:
        write(_head(200, {"Transfer-Encoding": "chunked"}))
        for chunk in chunks:
            write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        write(b"0\r\n\r\n")

    return respond


def endless_chunks(size: int = 1024, cap: int = 64 * 1024 * 1024) -> Responder:
    """A chunked body that goes on (up to ``cap`` bytes) until the client leaves."""

    def respond(write: Write, stop: threading.Event) -> None:
        write(_head(200, {"Transfer-Encoding": "chunked"}))
        chunk = b"%x\r\n%s\r\n" % (size, b"x" * size)
        sent = 0
        while sent < cap and not stop.is_set():
            write(chunk)
            sent += size
        write(b"0\r\n\r\n")

    return respond


def declares(length: int, sent: bytes, hold_s: float = 5.0) -> Responder:
    """Declare ``length`` bytes, send ``sent`` and hold the connection open."""

    def respond(write: Write, stop: threading.Event) -> None:
        write(_head(200, {"Content-Length": str(length)}) + sent)
        stop.wait(hold_s)

    return respond


def trickle_body(interval_s: float = 0.2, duration_s: float = 2.5) -> Responder:
    """A chunked 200 sending one byte every ``interval_s`` for ``duration_s``."""

    def respond(write: Write, stop: threading.Event) -> None:
        write(_head(200, {"Transfer-Encoding": "chunked"}))
        end = time.monotonic() + duration_s
        while time.monotonic() < end and not stop.wait(interval_s):
            write(b"1\r\nx\r\n")
        write(b"0\r\n\r\n")

    return respond


def trickle_headers(interval_s: float = 0.2, duration_s: float = 2.5) -> Responder:
    """Response headers sent one byte every ``interval_s`` for ``duration_s``, then a body."""

    def respond(write: Write, stop: threading.Event) -> None:
        write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        end = time.monotonic() + duration_s
        while time.monotonic() < end and not stop.wait(interval_s):
            write(b"a")
        write(b"\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody")

    return respond


def silent(hold_s: float = 5.0) -> Responder:
    """Read the request, never answer."""

    def respond(write: Write, stop: threading.Event) -> None:
        stop.wait(hold_s)

    return respond


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- images -----------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: tiny on disk, ``width * height`` bytes once decoded."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 and a row of zero bits
    rows_per_block = 1000
    compressor = zlib.compressobj(1)
    parts = [compressor.compress(row * rows_per_block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress(row * (height % rows_per_block)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 20000x20000 PNG (400 megapixels) of about 200 KB."""
    data = bilevel_png(20000, 20000)
    assert len(data) < 500_000
    return data


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) any attempt to decode pixels."""
    decoded: list[object] = []

    def load(self: ImageFile.ImageFile) -> Any:
        decoded.append(self.size)
        raise RuntimeError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


# == check_address =======================================================================

REFUSED_ADDRESSES = [
    ("10.0.0.1", "10.0.0.1 is a private address"),
    ("172.16.5.4", "172.16.5.4 is a private address"),
    ("192.168.1.1", "192.168.1.1 is a private address"),
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("127.8.8.8", "127.8.8.8 is a loopback address"),
    ("::1", "::1 is a loopback address"),
    ("169.254.169.254", "169.254.169.254 is a link-local address (cloud metadata"),
    ("fe80::1", "fe80::1 is a link-local address"),
    ("fe80::1%eth0", "fe80::1 is a link-local address"),
    ("100.64.0.1", "100.64.0.1 is not a public address"),
    ("0.0.0.0", "0.0.0.0 is the unspecified address"),  # noqa: S104 - an address to refuse
    ("::", ":: is the unspecified address"),
    ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("ff02::1", "ff02::1 is a multicast address"),
    ("fc00::1", "fc00::1 is a private address"),
    ("::ffff:10.0.0.1", "10.0.0.1 is a private address"),
    ("::ffff:127.0.0.1", "127.0.0.1 is a loopback address"),
    ("::ffff:169.254.169.254", "169.254.169.254 is a link-local address"),
    # Documentation and reserved ranges: Python counts them as private.
    ("192.0.2.1", "192.0.2.1 is a private address"),
    ("240.0.0.1", "240.0.0.1 is a private address"),
    ("255.255.255.255", "255.255.255.255 is a private address"),
    # IPv6 forms that carry an IPv4 address, and ranges Python 3.11 calls public.
    ("::7f00:1", "::7f00:1 is not a public address"),
    ("::ffff:0:7f00:1", "::ffff:0:7f00:1 is not a public address"),
    ("64:ff9b::a9fe:a9fe", "169.254.169.254 is a link-local address"),
    ("fec0::1", "fec0::1 is not a public address"),
    ("192.0.0.8", "192.0.0.8 is"),
]


@pytest.mark.parametrize(("address", "expected"), REFUSED_ADDRESSES)
def test_non_public_addresses_are_refused_saying_why(address: str, expected: str) -> None:
    with pytest.raises(FetchRefusedError) as refused:
        check_address(address)
    message = str(refused.value)
    assert message.startswith(expected)
    assert "public addresses only" in message
    assert ALLOW_NETWORKS_ENV in message
    # A refusal is final: retrying cannot make the address public.
    assert isinstance(refused.value, PermanentError)
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    # Only given to the function: nothing connects to them.
    check_address(address)
    check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 (RFC 6052) of 169.254.169.254
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    ],
)
def test_nat64_addresses_are_judged_by_the_ipv4_address_they_carry(address: str) -> None:
    """64:ff9b::/96 addresses are judged by the IPv4 address they carry.

    On an IPv6-only host behind DNS64/NAT64 (AWS IPv6-only subnets, EKS IPv6
    clusters), a connection to 64:ff9b::<a.b.c.d> is translated to a.b.c.d: a
    host name with such an AAAA record would reach private and metadata addresses.
    """
    with pytest.raises(FetchRefusedError, match="public addresses only"):
        check_address(address)


def test_allowed_networks_let_their_addresses_through_and_no_others() -> None:
    check_address("127.0.0.1", ALLOW_127_0_0_1)
    check_address("::ffff:127.0.0.1", ALLOW_127_0_0_1)  # judged as 127.0.0.1
    with pytest.raises(FetchRefusedError, match=r"127\.0\.0\.2 is a loopback address"):
        check_address("127.0.0.2", ALLOW_127_0_0_1)
    with pytest.raises(FetchRefusedError, match=r"::1 is a loopback address"):
        check_address("::1", ALLOW_127_0_0_1)

    ten = (ipaddress.ip_network("10.0.0.0/8"),)
    check_address("10.1.2.3", ten)
    with pytest.raises(FetchRefusedError, match=r"192\.168\.1\.1 is a private address"):
        check_address("192.168.1.1", ten)
    with pytest.raises(FetchRefusedError, match=r"169\.254\.169\.254 is a link-local"):
        check_address("169.254.169.254", ten)

    v6 = (ipaddress.ip_network("fd00::/8"),)
    check_address("fd12::1", v6)
    with pytest.raises(FetchRefusedError, match=r"10\.0\.0\.1 is a private address"):
        check_address("10.0.0.1", v6)


# == InputPolicy.addresses ===============================================================


@pytest.mark.parametrize(
    "answers",
    [["8.8.8.8", "10.0.0.1"], ["10.0.0.1", "8.8.8.8"], ["2606:4700:4700::1111", "fd00::5"]],
)
def test_a_name_with_any_refused_address_is_refused(answers: list[str]) -> None:
    resolver = StubResolver({"mixed.example.test": answers})
    policy = InputPolicy(resolver=resolver)
    with pytest.raises(FetchRefusedError, match="is a private address"):
        policy.addresses("https://mixed.example.test/cat.png")
    assert resolver.calls == [("mixed.example.test", 443)]


def test_a_name_with_public_addresses_gives_host_port_and_every_address() -> None:
    resolver = StubResolver({"cdn.example.test": ["8.8.8.8", "2606:4700:4700::1111"]})
    policy = InputPolicy(resolver=resolver)
    assert policy.addresses("https://cdn.example.test/a.png") == (
        "cdn.example.test",
        443,
        ["8.8.8.8", "2606:4700:4700::1111"],
    )
    assert policy.addresses("http://cdn.example.test/a.png")[1] == 80
    assert policy.addresses("http://CDN.example.test:8080/a.png")[:2] == ("cdn.example.test", 8080)
    assert resolver.calls == [
        ("cdn.example.test", 443),
        ("cdn.example.test", 80),
        ("cdn.example.test", 8080),
    ]


def test_allowed_networks_apply_to_resolved_names() -> None:
    resolver = StubResolver({"emulator.test": ["127.0.0.1"], "other.test": ["127.0.0.2"]})
    policy = loopback_policy(resolver=resolver)
    assert policy.addresses("http://emulator.test:9000/x") == ("emulator.test", 9000, ["127.0.0.1"])
    with pytest.raises(FetchRefusedError, match=r"127\.0\.0\.2 is a loopback address"):
        policy.addresses("http://other.test:9000/x")


def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    policy = InputPolicy(resolver=StubResolver({}))
    url = f"https://nowhere.example.test/x.png?X-Amz-Signature={SIGNATURE}"
    with pytest.raises(FetchRefusedError, match="unreachable") as refused:
        policy.addresses(url)
    message = str(refused.value)
    assert "nowhere.example.test" in message
    assert "gaierror" in message
    assert SIGNATURE not in message


def test_a_name_with_no_address_is_unreachable() -> None:
    policy = InputPolicy(resolver=StubResolver({"empty.test": []}))
    with pytest.raises(FetchRefusedError, match="resolves to no address: the URL is unreachable"):
        policy.addresses("http://empty.test/x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.0.1/x.png", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("http://[fe80::1%25eth0]/x", "fe80::1 is a link-local"),
        ("http://[::ffff:169.254.169.254]/x", "169.254.169.254 is a link-local"),
        ("http://[::1]:8080/x", "::1 is a loopback address"),
        ("https://127.0.0.1/x", "127.0.0.1 is a loopback address"),
    ],
)
def test_ip_literal_urls_are_checked_without_the_resolver(url: str, expected: str) -> None:
    policy = InputPolicy(resolver=no_lookups)
    with pytest.raises(FetchRefusedError) as refused:
        policy.addresses(url)
    assert expected in str(refused.value)


def test_public_ip_literal_urls_pass_without_the_resolver() -> None:
    policy = InputPolicy(resolver=no_lookups)
    assert policy.addresses("http://8.8.8.8/x") == ("8.8.8.8", 80, ["8.8.8.8"])
    assert policy.addresses("https://[2606:4700:4700::1111]:8443/x") == (
        "2606:4700:4700::1111",
        8443,
        ["2606:4700:4700::1111"],
    )


@pytest.mark.parametrize("url", ["ftp://example.test/x", "http:///just/a/path", "/local/file.png"])
def test_addresses_needs_an_http_url_with_a_host(url: str) -> None:
    policy = InputPolicy(resolver=no_lookups)
    with pytest.raises(FetchRefusedError, match="is not an http\\(s\\) URL with a host"):
        policy.addresses(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        # Python reads the host after "@" (public), a browser-style parser before it.
        ("http://127.0.0.1\\@public.example/cat.png", "contains a backslash"),
        ("http://public.example\\.127.0.0.1/cat.png", "contains a backslash"),
        ("http://user@public.example/cat.png", "has user info (user@host)"),
        ("https://user:pw@public.example/cat.png", "has user info (user@host)"),
        (
            "http://public.example/a cat.png",
            "contains whitespace or a control character (at character 24)",
        ),
        (
            "http://public.example/cat.png\t",
            "contains whitespace or a control character (at character 30)",
        ),
        (
            "http://public.example/\x00cat.png",
            "contains whitespace or a control character (at character 23)",
        ),
    ],
)
def test_urls_parsers_read_differently_are_refused_before_any_lookup(
    url: str, problem: str
) -> None:
    # What the service is sent is the URL as given: refused unless unambiguous.
    policy = InputPolicy(resolver=no_lookups)
    with pytest.raises(FetchRefusedError) as refused:
        policy.addresses(url)
    message = str(refused.value)
    assert f" {problem}: not accepted as an input" in message
    assert ":pw@" not in message
    assert "user@public" not in message


# == InputPolicy.check_store_url ========================================================

STORE_POLICY = InputPolicy(store_locations=("s3://catalogue/photos", "gs://shared"))


@pytest.mark.parametrize(
    "url",
    [
        "s3://outputs/runs/inputs/a.png",  # under the output storage's own location
        "s3://outputs/runs/batch/2026-01-01/b.png",
        "s3://catalogue/photos/c.png",  # a configured location
        "s3://catalogue/photos/2026/d.png",
        "s3a://catalogue/photos/e.png",  # s3a names the same buckets
        "s3a://outputs/runs/g.png",
        "gs://shared/f.png",
    ],
)
def test_storage_urls_in_the_output_location_or_a_configured_location_pass(url: str) -> None:
    STORE_POLICY.check_store_url(url, "s3", "outputs/runs")


@pytest.mark.parametrize(
    "url",
    [
        "s3://outputs/finance/scan.png",  # the output bucket, another prefix
        "s3://outputs/runs-private/a.png",  # a prefix that only starts the same
        "s3://outputs/a.png",
        "s3a://outputs/finance/scan.png",
    ],
)
def test_the_output_bucket_outside_the_storage_prefix_is_refused(url: str) -> None:
    # Storage s3://outputs/runs: the rest of the bucket may be other teams' files,
    # which the worker's credentials can read and the triggerer may not.
    with pytest.raises(FetchRefusedError) as refused:
        STORE_POLICY.check_store_url(url, "s3", "outputs/runs")
    assert str(refused.value).startswith(
        f"{display_url(url)} is outside the storage inputs may be read from (the output "
        "storage's location, s3://outputs/runs; s3://catalogue/photos, gs://shared); "
        "set SEGMIND_INPUT_BUCKETS to allow it"
    )


def test_a_store_that_is_a_whole_filesystem_reads_its_own_urls() -> None:
    # memory:// with no root: the flows' own intermediate images are inputs.
    STORE_POLICY.check_store_url("memory://edit-image/2026-01-01/bg.png", "memory", "")
    with pytest.raises(FetchRefusedError, match="is outside the storage"):
        STORE_POLICY.check_store_url("s3://outputs/a.png", "file", "")


@pytest.mark.parametrize(
    ("url", "store_protocol", "store_root", "expected"),
    [
        ("s3://hr-private/badge.png", "s3", "outputs/runs", "is outside the storage"),
        ("s3://catalogue/photos-private/a.png", "s3", "outputs", "is outside the storage"),
        ("s3://catalogue/a.png", "s3", "outputs", "is outside the storage"),
        ("s3://outputs/a.png", "file", "/srv/outputs", "is outside the storage"),
        ("s3://outputs/a.png", None, None, "is outside the storage"),
        ("memory://outputs/a.png", "s3", "outputs", "is outside the storage"),
        ("s3://outputs/../hr-private/a.png", "s3", "outputs", "has a '..' segment"),
        ("s3://catalogue/photos/../../hr/a.png", "s3", "outputs", "has a '..' segment"),
        ("s3://catalogue/photos#/../../hr/a.png", "s3", "outputs", "has '?' or '#' in its key"),
        ("s3://catalogue/photos/a.png?x=/../..", "s3", "outputs", "has '?' or '#' in its key"),
    ],
)
def test_storage_urls_elsewhere_are_refused_naming_what_is_allowed(
    url: str, store_protocol: str | None, store_root: str | None, expected: str
) -> None:
    # The worker's credentials may reach buckets the person triggering a run may not.
    with pytest.raises(FetchRefusedError) as refused:
        STORE_POLICY.check_store_url(url, store_protocol, store_root)
    message = str(refused.value)
    assert message.startswith(f"{display_url(url)} {expected}")
    if expected.startswith("is outside"):
        assert "s3://catalogue/photos, gs://shared); set SEGMIND_INPUT_BUCKETS" in message


def test_without_configured_locations_only_the_output_location_is_readable() -> None:
    policy = InputPolicy()
    policy.check_store_url("s3://outputs/prefix/x.png", "s3", "outputs/prefix")
    policy.check_store_url("s3://outputs/x.png", "s3", "outputs")  # storage at the bucket's root
    for url in ("s3://other/x.png", "s3://outputs/x.png"):
        with pytest.raises(FetchRefusedError) as refused:
            policy.check_store_url(url, "s3", "outputs/prefix")
        assert (
            "(the output storage's location, s3://outputs/prefix; none in SEGMIND_INPUT_BUCKETS)"
            in str(refused.value)
        )


# == InputPolicy.from_env ================================================================


def test_from_env_reads_roots_separated_by_pathsep(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    policy = InputPolicy.from_env({INPUT_ROOTS_ENV: f"{first}{os.pathsep}{second}"})
    assert policy.local_roots == (first, second)
    assert policy.allowed_networks == ()


def test_from_env_defaults_to_the_working_directory_and_no_networks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for environ in ({}, {INPUT_ROOTS_ENV: "  ", ALLOW_NETWORKS_ENV: ""}):
        policy = InputPolicy.from_env(environ)
        assert policy.local_roots == (Path.cwd(),)
        assert Path.cwd().resolve() == tmp_path.resolve()
        assert policy.allowed_networks == ()
        assert policy.max_bytes == 20 * 1024 * 1024
        assert policy.timeout_s == 30.0


def test_from_env_parses_networks_separated_by_commas_or_spaces() -> None:
    policy = InputPolicy.from_env({ALLOW_NETWORKS_ENV: "127.0.0.1, 10.0.0.0/8 ::1,fd00::/8"})
    assert policy.allowed_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
    )
    check_address("10.9.9.9", policy.allowed_networks)


@pytest.mark.parametrize("value", ["localhost", "10.0.0.0/33", "127.0.0.1/32;10.0.0.0/8"])
def test_from_env_names_the_variable_of_a_bad_network(value: str) -> None:
    with pytest.raises(ValueError, match=ALLOW_NETWORKS_ENV):
        InputPolicy.from_env({ALLOW_NETWORKS_ENV: value})


def test_from_env_reads_storage_locations_separated_by_commas_or_spaces() -> None:
    policy = InputPolicy.from_env({"SEGMIND_INPUT_BUCKETS": "s3://a/photos, s3://b  gs://c"})
    assert policy.store_locations == ("s3://a/photos", "s3://b", "gs://c")
    assert InputPolicy.from_env({}).store_locations == ()


@pytest.mark.parametrize("value", ["bucket-without-scheme", "/local/folder", "s3://"])
def test_from_env_refuses_a_storage_location_that_is_not_a_storage_url(value: str) -> None:
    with pytest.raises(ValueError, match=r"SEGMIND_INPUT_BUCKETS: .* is not a storage URL"):
        InputPolicy.from_env({"SEGMIND_INPUT_BUCKETS": value})


def test_from_env_reads_the_bounds() -> None:
    policy = InputPolicy.from_env({MAX_BYTES_ENV: "1000", TIMEOUT_ENV: "2.5"})
    assert (policy.max_bytes, policy.timeout_s) == (1000, 2.5)
    with pytest.raises(ValueError, match=MAX_BYTES_ENV):
        InputPolicy.from_env({MAX_BYTES_ENV: "lots"})


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ALLOW_NETWORKS_ENV, "192.168.0.0/16")
    monkeypatch.setenv(INPUT_ROOTS_ENV, str(tmp_path))
    policy = InputPolicy.from_env()
    assert policy.allowed_networks == (ipaddress.ip_network("192.168.0.0/16"),)
    assert policy.local_roots == (tmp_path,)


# == check_scheme ========================================================================


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///etc/passwd", "file:// inputs are not accepted (give a plain path instead)"),
        ("FILE:///etc/passwd", "file:// inputs are not accepted"),
        ("ftp://example.test/cat.png", "ftp:// inputs are not accepted"),
        ("gopher://example.test:70/_x", "gopher:// inputs are not accepted"),
        ("gs://bucket/cat.png", "gs:// inputs are not accepted"),
        ("memory://inputs/cat.png", "memory:// inputs are not accepted"),
        ("dict://127.0.0.1:11211/stat", "dict:// inputs are not accepted"),
    ],
)
def test_other_schemes_are_refused(url: str, expected: str, tmp_path: Path) -> None:
    policy = InputPolicy(local_roots=(tmp_path,))
    with pytest.raises(FetchRefusedError) as refused:
        policy.check_scheme(url)
    message = str(refused.value)
    assert expected in message
    assert "use http(s), s3, or a file under" in message
    assert str(tmp_path) in message


def test_the_store_protocol_is_accepted_only_as_the_store_protocol() -> None:
    policy = InputPolicy()
    assert policy.check_scheme("memory://inputs/cat.png", store_protocol="memory") == "memory"
    with pytest.raises(FetchRefusedError, match="memory:// inputs are not accepted"):
        policy.check_scheme("memory://inputs/cat.png", store_protocol="s3")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("http://example.test/a.png", "http"),
        ("HTTPS://example.test/a.png", "https"),
        ("s3://bucket/a.png", "s3"),
        ("s3a://bucket/a.png", "s3a"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("/srv/images/a.png", ""),
        ("relative/a.png", ""),
        ("a.png", ""),
        ("C:\\images\\a.png", ""),
    ],
)
def test_accepted_schemes_and_plain_paths(url: str, scheme: str) -> None:
    assert InputPolicy().check_scheme(url) == scheme


# == check_local_path ====================================================================


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An input root holding cat.png, next to an outside folder holding secret.png."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "cat.png").write_bytes(PNG)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(PNG)
    return tmp_path / "root"


def test_a_path_inside_a_root_is_accepted_resolved(root: Path) -> None:
    policy = InputPolicy(local_roots=(root,))
    assert policy.check_local_path(root / "cat.png") == (root / "cat.png").resolve()
    assert policy.check_local_path(str(root / "sub" / ".." / "cat.png")) == (
        (root / "cat.png").resolve()
    )
    (root / "alias.png").symlink_to(root / "cat.png")
    assert policy.check_local_path(root / "alias.png") == (root / "cat.png").resolve()


def test_a_root_given_through_a_symlink_still_holds_its_files(root: Path) -> None:
    alias = root.parent / "alias-root"
    alias.symlink_to(root, target_is_directory=True)
    policy = InputPolicy(local_roots=(alias,))
    assert policy.check_local_path(root / "cat.png") == (root / "cat.png").resolve()
    assert policy.check_local_path(alias / "cat.png") == (root / "cat.png").resolve()


def _outside_paths(root: Path) -> list[Path | str]:
    (root / "link.png").symlink_to(root.parent / "outside" / "secret.png")
    (root / "linkdir").symlink_to(root.parent / "outside", target_is_directory=True)
    (root.parent / "root-evil").mkdir()
    return [
        f"{root}/../outside/secret.png",
        root / "link.png",
        root / "linkdir" / "secret.png",
        root.parent / "root-evil" / "x.png",  # shares the root's name as a prefix
        "/etc/passwd",
        "~/.ssh/id_rsa",
    ]


def test_paths_outside_every_root_are_refused(root: Path) -> None:
    policy = InputPolicy(local_roots=(root,))
    for path in _outside_paths(root):
        with pytest.raises(FetchRefusedError) as refused:
            policy.check_local_path(path)
        message = str(refused.value)
        assert "is outside the folders inputs may be read from" in message, path
        assert str(root) in message
        assert INPUT_ROOTS_ENV in message


def test_no_roots_means_no_local_files(root: Path) -> None:
    with pytest.raises(FetchRefusedError, match="no local roots configured"):
        InputPolicy(local_roots=()).check_local_path(root / "cat.png")


# == display_url =========================================================================


def test_display_url_drops_user_info_query_and_fragment() -> None:
    url = f"https://{USER}:{PASSWORD}@example.test:8443/a/b.png?X-Amz-Signature={SIGNATURE}#frag"
    assert display_url(url) == "https://example.test:8443/a/b.png?..."
    assert display_url("http://[::1]:80/x") == "http://[::1]:80/x"
    assert display_url("/srv/images/a.png") == "/srv/images/a.png"


# == fetch_http ==========================================================================


def test_fetch_returns_the_body() -> None:
    with file_server({"/cat.png": (200, PNG, "image/png")}) as base:
        assert fetch_http(f"{base}/cat.png", loopback_policy()) == PNG


def test_fetch_reads_a_body_of_exactly_the_limit() -> None:
    body = b"y" * 1000
    with scripted_server(
        {"/fixed": send(200, body), "/chunked": chunked(body[:600], body[600:])}
    ) as s:
        policy = loopback_policy(max_bytes=1000)
        assert fetch_http(f"{s.url}/fixed", policy) == body
        assert fetch_http(f"{s.url}/chunked", policy) == body


def test_fetch_refuses_a_loopback_server_that_the_policy_does_not_allow(
    network_guard: NetworkGuard,
) -> None:
    with scripted_server({"/cat.png": send(200, PNG)}) as server:
        with pytest.raises(FetchRefusedError, match=r"127\.0\.0\.1 is a loopback address"):
            fetch_http(f"{server.url}/cat.png", InputPolicy())
        assert server.requests == []


def test_fetch_refuses_an_error_status_naming_it() -> None:
    with (
        scripted_server({}) as server,
        pytest.raises(FetchRefusedError, match=r"/missing\.png answered 404"),
    ):
        fetch_http(f"{server.url}/missing.png", loopback_policy())


def test_fetch_refuses_a_declared_length_over_the_limit_before_reading() -> None:
    with scripted_server({"/big": declares(10_000_000, b"x" * 10)}) as server:
        started = time.monotonic()
        with pytest.raises(FetchRefusedError) as refused:
            fetch_http(f"{server.url}/big", loopback_policy(max_bytes=1000, timeout_s=3.0))
        elapsed = time.monotonic() - started
    # The declared size is refused at once: reading the body would wait on the
    # server (which sends 10 of the 10000000 bytes) until the 3 s timeout.
    assert "is 10000000 bytes; the limit is 1000" in str(refused.value)
    assert elapsed < 2.0


def test_fetch_refuses_a_chunked_body_over_the_limit() -> None:
    chunks = [b"z" * 500] * 10
    with (
        scripted_server({"/chunked": chunked(*chunks)}) as server,
        pytest.raises(FetchRefusedError, match="is more than 1000 bytes, the limit"),
    ):
        fetch_http(f"{server.url}/chunked", loopback_policy(max_bytes=1000))


def test_fetch_stops_reading_an_endless_body_at_the_limit() -> None:
    with scripted_server({"/endless": endless_chunks()}) as server:
        started = time.monotonic()
        with pytest.raises(FetchRefusedError, match="is more than 10000 bytes, the limit"):
            fetch_http(f"{server.url}/endless", loopback_policy(max_bytes=10_000, timeout_s=5.0))
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip, gzip", "deflate", "br"])
def test_fetch_refuses_a_compressed_body_it_did_not_ask_for(encoding: str) -> None:
    # Sent although the client asked for identity: 5 MB of zeros in ~5 KB. Decoding
    # it (layer on layer) is how a few hundred bytes become gigabytes in memory.
    body = gzip.compress(bytes(5_000_000))
    assert len(body) < 10_000
    responder = send(200, body, {"Content-Encoding": encoding})
    with (
        scripted_server({"/gz": responder}) as server,
        pytest.raises(FetchRefusedError, match="-encoded although none was asked for"),
    ):
        fetch_http(f"{server.url}/gz", loopback_policy(max_bytes=1_000_000))


def test_fetch_download_time_is_bounded_while_bytes_trickle() -> None:
    """The time bound holds against a body trickled a byte at a time.

    A server sending a byte every 0.2 s never trips httpx's per-read timeout,
    and a reader that checks its deadline only once a chunk is full would wait
    as long as the server likes; the download runs in a helper thread that is
    abandoned at the deadline.
    """
    timeout_s = 0.5
    with scripted_server({"/slow": trickle_body(interval_s=0.2, duration_s=2.5)}) as server:
        started = time.monotonic()
        with pytest.raises(FetchRefusedError, match=r"took more than 0\.5 s to download"):
            fetch_http(f"{server.url}/slow", loopback_policy(timeout_s=timeout_s))
        elapsed = time.monotonic() - started
    assert elapsed < timeout_s + 1.0, (
        f"refused after {elapsed:.1f} s: the {timeout_s} s bound was not enforced "
        "while the server kept sending a byte every 0.2 s"
    )


def test_fetch_time_bound_covers_slowly_sent_headers() -> None:
    """The deadline covers the response headers too.

    Response headers sent a byte every 0.2 s defeat httpx's per-read timeout;
    the same holds for the redirect hops.
    """
    timeout_s = 0.5
    with scripted_server({"/slow": trickle_headers(interval_s=0.2, duration_s=2.5)}) as server:
        started = time.monotonic()
        with pytest.raises(FetchRefusedError, match=r"took more than 0\.5 s|Timeout"):
            fetch_http(f"{server.url}/slow", loopback_policy(timeout_s=timeout_s))
        elapsed = time.monotonic() - started
    assert elapsed < timeout_s + 1.0, (
        f"refused after {elapsed:.1f} s: the {timeout_s} s bound was not enforced "
        "while the server sent its headers a byte every 0.2 s"
    )


def test_fetch_refuses_a_server_that_never_answers_within_the_bound() -> None:
    with scripted_server({"/silent": silent()}) as server:
        started = time.monotonic()
        with pytest.raises(FetchRefusedError, match=r"unreachable|took more than"):
            fetch_http(f"{server.url}/silent", loopback_policy(timeout_s=0.5))
        assert time.monotonic() - started < 1.5


def test_fetch_refuses_a_port_nothing_listens_on() -> None:
    url = f"http://127.0.0.1:{closed_port()}/cat.png"
    with pytest.raises(FetchRefusedError, match=r"\(ConnectError\): the URL is unreachable"):
        fetch_http(url, loopback_policy())


def test_fetch_follows_redirects_on_the_same_server() -> None:
    routes = {
        "/r1": redirect("/r2"),
        "/r2": redirect("r3", status=301),  # relative to /r2
        "/r3": redirect("/final.png", status=307),
        "/final.png": send(200, PNG),
    }
    with scripted_server(routes) as server:
        policy = loopback_policy()
        assert fetch_http(f"{server.url}/r3", policy) == PNG
        assert server.paths == ["/r3", "/final.png"]
        # Three redirects: the most that are followed.
        assert fetch_http(f"{server.url}/r1", policy) == PNG
        assert server.paths[2:] == ["/r1", "/r2", "/r3", "/final.png"]
        # An absolute Location on another loopback server.
        with scripted_server({"/a": redirect(f"{server.url}/final.png", status=308)}) as other:
            assert fetch_http(f"{other.url}/a", policy) == PNG
            assert other.paths == ["/a"]
        assert server.paths[-1] == "/final.png"


def test_fetch_refuses_more_than_three_redirects() -> None:
    routes = {
        "/s0": redirect("/s1"),
        "/s1": redirect("/s2"),
        "/s2": redirect("/s3"),
        "/s3": redirect("/final.png"),
        "/final.png": send(200, PNG),
    }
    with scripted_server(routes) as server:
        with pytest.raises(FetchRefusedError, match="/s0 redirects more than 3 times"):
            fetch_http(f"{server.url}/s0", loopback_policy())
        assert server.paths == ["/s0", "/s1", "/s2", "/s3"]


def test_a_redirect_to_a_metadata_name_is_refused_before_connecting(
    network_guard: NetworkGuard,
) -> None:
    resolver = StubResolver({"metadata.internal.test": ["169.254.169.254"]})
    with scripted_server(
        {"/start": redirect("http://metadata.internal.test/latest/meta-data/iam/")}
    ) as server:
        with pytest.raises(FetchRefusedError) as refused:
            fetch_http(f"{server.url}/start", loopback_policy(resolver=resolver))
        assert server.paths == ["/start"]
    assert "169.254.169.254 is a link-local address (cloud metadata" in str(refused.value)
    assert resolver.calls == [("metadata.internal.test", 80)]
    assert network_guard.refused == []  # no lookup, no connection went past the check


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
        ("http://[::1]:{port}/cat.png", "::1 is a loopback address"),
        ("http://127.0.0.2:{port}/cat.png", "127.0.0.2 is a loopback address"),
        ("file:///etc/passwd", "file:///etc/passwd is not an http(s) URL with a host"),
        ("gopher://127.0.0.1:{port}/_x", "is not an http(s) URL with a host"),
    ],
)
def test_redirects_are_checked_like_the_first_url(
    location: str, expected: str, network_guard: NetworkGuard
) -> None:
    routes: dict[str, Responder] = {"/cat.png": send(200, PNG)}
    with scripted_server(routes) as server:
        routes["/start"] = redirect(location.format(port=server.port))
        with pytest.raises(FetchRefusedError) as refused:
            fetch_http(f"{server.url}/start", loopback_policy(resolver=no_lookups))
        assert server.paths == ["/start"]
    assert expected in str(refused.value)
    assert network_guard.refused == []


def test_a_resolved_name_is_fetched_from_the_checked_address_with_its_host_header(
    network_guard: NetworkGuard,
) -> None:
    routes: dict[str, Responder] = {"/cat.png": send(200, PNG)}
    with scripted_server(routes) as server:
        resolver = StubResolver(
            {"images.example.test": ["127.0.0.1"], "cdn.example.test": ["127.0.0.1"]}
        )
        routes["/start"] = redirect(f"http://cdn.example.test:{server.port}/cat.png")
        policy = loopback_policy(resolver=resolver)

        data = fetch_http(f"http://images.example.test:{server.port}/start", policy)

        assert data == PNG
        assert server.requests == [
            ("/start", f"images.example.test:{server.port}"),
            ("/cat.png", f"cdn.example.test:{server.port}"),
        ]
    # One lookup per name, answered by the policy's resolver; the connection
    # went to the address it returned (the system resolver was never asked).
    assert resolver.calls == [
        ("images.example.test", server.port),
        ("cdn.example.test", server.port),
    ]
    assert network_guard.refused == []


def test_a_name_with_mixed_answers_is_refused_before_connecting(
    network_guard: NetworkGuard,
) -> None:
    with scripted_server({"/cat.png": send(200, PNG)}) as server:
        resolver = StubResolver({"rebind.example.test": ["127.0.0.1", "10.0.0.1"]})
        with pytest.raises(FetchRefusedError, match=r"10\.0\.0\.1 is a private address"):
            fetch_http(
                f"http://rebind.example.test:{server.port}/cat.png",
                loopback_policy(resolver=resolver),
            )
        assert server.requests == []
    assert network_guard.refused == []


def _secret_url(base: str, path: str) -> str:
    return f"{base}{path}?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=c"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/missing.png", "answered 404"),
        ("/big", "the limit is 100"),
        ("/chunked", "is more than 100 bytes"),
        ("/loop", "redirects more than 3 times"),
        ("/to-missing", "answered 404"),
        ("/to-metadata", "169.254.169.254 is a link-local"),
    ],
)
def test_error_messages_name_no_query_string(path: str, expected: str) -> None:
    routes: dict[str, Responder] = {
        "/big": send(200, b"b" * 1000),
        "/chunked": chunked(b"c" * 600, b"c" * 600),
        "/loop": redirect(f"/loop?X-Amz-Signature={SIGNATURE}"),
        "/to-missing": redirect(f"/gone.png?X-Amz-Signature={SIGNATURE}"),
        "/to-metadata": redirect(f"http://169.254.169.254/latest?X-Amz-Signature={SIGNATURE}"),
    }
    with scripted_server(routes) as server, pytest.raises(FetchRefusedError) as refused:
        fetch_http(_secret_url(server.url, path), loopback_policy(max_bytes=100))
    message = str(refused.value)
    assert expected in message
    for secret in (SIGNATURE, PASSWORD, USER, "X-Amz-Credential"):
        assert secret not in message


@pytest.mark.parametrize(
    "url",
    [
        f"http://10.0.0.1/x.png?X-Amz-Signature={SIGNATURE}",
        f"http://127.0.0.1:{{port}}/x.png?X-Amz-Signature={SIGNATURE}",
        f"http://unknown.example.test/x.png?X-Amz-Signature={SIGNATURE}",
        f"http://{USER}:{PASSWORD}@127.0.0.1:{{port}}/x.png?X-Amz-Signature={SIGNATURE}",
    ],
    ids=["refused-address", "unreachable", "unresolvable", "user-info"],
)
def test_refusals_before_any_answer_name_no_secrets(url: str) -> None:
    policy = loopback_policy(resolver=StubResolver({}))
    with pytest.raises(FetchRefusedError) as refused:
        fetch_http(url.format(port=closed_port()), policy)
    message = str(refused.value)
    for secret in (SIGNATURE, PASSWORD, USER):
        assert secret not in message


@pytest.mark.parametrize(
    "call",
    [
        "addresses:http://127.0.0.1:99999/x.png?X-Amz-Signature=S",
        "addresses:http://127.0.0.1:port/x.png",
        "read:http://127.0.0.1:99999/x.png",
        "read:http://[::1/x.png",
        "redirect:http://127.0.0.1:99999/x.png",
    ],
)
def test_malformed_urls_are_refused_not_raised_as_bare_value_errors(call: str) -> None:
    """A URL with a bad port or a broken IPv6 host is a refusal, not a bare ValueError.

    ``parts.port`` and ``urlsplit`` raise ValueError on such URLs, in the input
    itself or in a server's ``Location`` header; `read_image_input` and
    `resolve_image` must still raise `InvalidInputImageError` (a `PermanentError`).
    """
    kind, _, url = call.partition(":")
    if kind == "addresses":
        with pytest.raises(FetchRefusedError, match="invalid port"):
            InputPolicy(resolver=no_lookups).addresses(url)
    elif kind == "read":
        with pytest.raises(InvalidInputImageError, match="image"):
            read_image_input(url, field="image", policy=loopback_policy())
    else:
        with (
            scripted_server({"/start": redirect(url)}) as server,
            pytest.raises(FetchRefusedError, match="invalid port"),
        ):
            fetch_http(f"{server.url}/start", loopback_policy())


# == through segmind_core.images =========================================================


def test_resolve_image_refuses_loopback_under_the_default_policy() -> None:
    default = InputPolicy.from_env({})
    assert default.allowed_networks == ()
    with scripted_server({"/cat.png": send(200, PNG, {"Content-Type": "image/png"})}) as server:
        url = f"{server.url}/cat.png"
        with pytest.raises(InvalidInputImageError) as refused:
            resolve_image(url, field="input_image", policy=default)
        with pytest.raises(InvalidInputImageError, match=ALLOW_NETWORKS_ENV):
            read_image_input(url, field="input_image", policy=default)
        assert server.requests == []
    message = str(refused.value)
    assert message.startswith("input_image: ")
    assert "127.0.0.1 is a loopback address" in message
    assert ALLOW_NETWORKS_ENV in message
    assert refused.value.field == "input_image"


def test_resolve_image_fetches_an_allowed_url_and_sends_it_as_is() -> None:
    with scripted_server({"/cat.png": send(200, PNG, {"Content-Type": "image/png"})}) as server:
        url = f"{server.url}/cat.png?X-Amz-Signature={SIGNATURE}"
        resolved = resolve_image(url, field="input_image", policy=loopback_policy())
        assert server.paths == [f"/cat.png?X-Amz-Signature={SIGNATURE}"]
    assert resolved.ref == url
    # The identity leaves the signature out: the same object signed again is the same input.
    assert resolved.identity == f"{server.url}/cat.png"
    assert SIGNATURE not in resolved.source


def test_images_use_the_policy_from_the_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with scripted_server({"/cat.png": send(200, PNG)}) as server:
        url = f"{server.url}/cat.png"
        monkeypatch.setenv(ALLOW_NETWORKS_ENV, "127.0.0.1/32")
        assert read_image_input(url, field="image") == PNG
        monkeypatch.setenv(ALLOW_NETWORKS_ENV, "")
        with pytest.raises(InvalidInputImageError, match=r"127\.0\.0\.1 is a loopback address"):
            read_image_input(url, field="image")
        assert server.paths == ["/cat.png"]


def test_a_decompression_bomb_is_refused_before_decoding(
    bomb_png: bytes, tmp_path: Path, no_decoding: list[object]
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png)
    policy = loopback_policy(local_roots=(tmp_path,))
    with scripted_server({"/bomb.png": send(200, bomb_png, {"Content-Type": "image/png"})}) as s:
        for value in (str(path), path, f"{s.url}/bomb.png"):
            with pytest.raises(InvalidInputImageError) as refused:
                resolve_image(value, field="input_image", policy=policy)
            message = str(refused.value)
            assert "pixels" in message, value
            assert "decompression bomb" in message
            assert "before decoding" in message
    assert no_decoding == []


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(
    tmp_path: Path, no_decoding: list[object]
) -> None:
    # 81 megapixels: under Pillow's own bomb threshold, over the product's 64.
    path = tmp_path / "wide.png"
    path.write_bytes(bilevel_png(9000, 9000))
    with pytest.raises(InvalidInputImageError, match=r"9000x9000 = 81000000 pixels") as refused:
        read_image_input(path, field="input_image", policy=InputPolicy(local_roots=(tmp_path,)))
    assert "before decoding" in str(refused.value)
    assert no_decoding == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (PNG[: len(PNG) // 2], "is not a readable image (JPEG, PNG, GIF or WEBP), or is truncated"),
        (PNG[:-20], "or is truncated"),
        (b"<html>not an image</html>", "is not a readable image"),
        (b"%PDF-1.4\n", "is not a readable image"),
    ],
    ids=["empty", "truncated-half", "truncated-end", "html", "pdf"],
)
def test_files_and_downloads_that_are_not_whole_images_are_refused(
    content: bytes, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "input.png"
    path.write_bytes(content)
    policy = loopback_policy(local_roots=(tmp_path,))
    with pytest.raises(InvalidInputImageError, match=re.escape(expected)) as from_file:
        read_image_input(str(path), field="input_image", policy=policy)
    assert str(path) in str(from_file.value)
    with (
        scripted_server({"/input.png": send(200, content, {"Content-Type": "image/png"})}) as s,
        pytest.raises(InvalidInputImageError, match=re.escape(expected)),
    ):
        resolve_image(f"{s.url}/input.png", field="input_image", policy=policy)


def test_images_outside_the_policy_are_refused(root: Path) -> None:
    policy = InputPolicy(local_roots=(root,))
    assert read_image_input(root / "cat.png", field="image", policy=policy) == PNG
    for value in (
        root.parent / "outside" / "secret.png",
        f"{root}/../outside/secret.png",
        f"file://{root}/cat.png",
        "memory://inputs/cat.png",
    ):
        with pytest.raises(InvalidInputImageError, match=r"outside the folders|not accepted"):
            read_image_input(value, field="image", policy=policy)


def test_an_image_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    policy = loopback_policy(local_roots=(tmp_path,), max_bytes=len(PNG) - 1)
    with pytest.raises(InvalidInputImageError, match=f"the limit is {len(PNG) - 1}"):
        read_image_input(path, field="image", policy=policy)
    with (
        scripted_server({"/cat.png": send(200, PNG)}) as server,
        pytest.raises(InvalidInputImageError, match=f"the limit is {len(PNG) - 1}"),
    ):
        resolve_image(f"{server.url}/cat.png", field="image", policy=policy)


def test_each_checked_address_is_tried_until_one_answers(network_guard: NetworkGuard) -> None:
    # 127.0.0.2 has nothing listening on the port: the next checked address is tried.
    with scripted_server({"/cat.png": send(200, PNG)}) as server:
        resolver = StubResolver({"images.example.test": ["127.0.0.2", "127.0.0.1"]})
        policy = InputPolicy(
            allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),), resolver=resolver
        )

        data = fetch_http(f"http://images.example.test:{server.port}/cat.png", policy)

        assert data == PNG
        assert server.requests == [("/cat.png", f"images.example.test:{server.port}")]
    assert network_guard.refused == []


def test_an_international_host_name_is_sent_in_its_ascii_form(network_guard: NetworkGuard) -> None:
    with scripted_server({"/cat.png": send(200, PNG)}) as server:
        resolver = StubResolver({"bücher.example.test": ["127.0.0.1"]})

        data = fetch_http(
            f"http://bücher.example.test:{server.port}/cat.png", loopback_policy(resolver=resolver)
        )

        assert data == PNG
        assert server.requests == [("/cat.png", f"xn--bcher-kva.example.test:{server.port}")]
    assert network_guard.refused == []


def test_through_a_proxy_the_proxy_is_asked_by_name_after_the_check(
    monkeypatch: pytest.MonkeyPatch, network_guard: NetworkGuard
) -> None:
    # The loopback server plays the proxy: a proxied plain-http GET carries the full URL.
    with scripted_server({"http://images.example.test/cat.png": send(200, PNG)}) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        resolver = StubResolver({"images.example.test": ["127.0.0.1"]})

        data = fetch_http("http://images.example.test/cat.png", loopback_policy(resolver=resolver))

        assert data == PNG
        assert proxy.requests == [("http://images.example.test/cat.png", "images.example.test")]
        # The name was still checked first: a private answer is refused before the proxy.
        private = StubResolver({"images.example.test": ["10.0.0.1"]})
        with pytest.raises(FetchRefusedError, match=r"10\.0\.0\.1 is a private address"):
            fetch_http("http://images.example.test/cat.png", loopback_policy(resolver=private))
        assert len(proxy.requests) == 1
    assert network_guard.refused == []


@pytest.mark.parametrize(
    ("no_proxy", "via"),
    [
        ("example.test:{port}", "direct"),
        (".example.test:{port}", "direct"),
        ("images.example.test", "direct"),
        ("example.test:1", "proxy"),
        ("other.example.test", "proxy"),
    ],
)
def test_the_proxy_rules_send_a_url_to_the_proxy_or_pin_it_never_resolve_it_again(
    no_proxy: str, via: str, monkeypatch: pytest.MonkeyPatch, network_guard: NetworkGuard
) -> None:
    # NO_PROXY entries with a port were read differently by urllib and httpx: one
    # said "proxy", the other connected straight to the name, resolving it again
    # (a rebinding DNS could then answer an address that was never checked). Now a
    # URL goes to the proxy, or to its checked address, and entries with a port
    # match URLs with that port.
    with scripted_server({"/cat.png": send(200, PNG)}) as server:
        url = f"http://images.example.test:{server.port}/cat.png"
        with scripted_server({url: send(200, PNG)}) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            monkeypatch.setenv("NO_PROXY", no_proxy.format(port=server.port))
            monkeypatch.delenv("no_proxy", raising=False)
            resolver = StubResolver({"images.example.test": ["127.0.0.1"]})

            data = fetch_http(url, loopback_policy(resolver=resolver))

            assert data == PNG
            host = f"images.example.test:{server.port}"
            if via == "proxy":
                assert proxy.requests == [(url, host)]
                assert server.requests == []
            else:
                assert proxy.requests == []
                assert server.requests == [("/cat.png", host)]
    assert network_guard.refused == []
