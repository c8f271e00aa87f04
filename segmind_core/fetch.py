"""What the worker may read itself, from where, how much and for how long.

Inputs arrive in flow parameters and manifest rows, which anyone who can
trigger a run controls. Before this project reads one (to check it is an
image, to hash it for the cache key, to upload it for a presigned URL), the
reference must pass `InputPolicy`:

- ``http``/``https`` URLs: the host's every address must be public
  (`check_address`), unless it falls in a network the operator allowed
  (``SEGMIND_INPUT_ALLOW_NETWORKS``, e.g. a test emulator on 127.0.0.1). The
  download connects to the address that was checked (no second DNS lookup
  for a rebinding name to change), follows at most three redirects, each
  checked the same way, and is bounded in bytes and in total time.
- ``s3://`` (and ``s3a://``) URLs and URLs on the output store's own
  filesystem: under the output storage's location (``bucket/prefix``, not the
  whole bucket) or a configured location (``SEGMIND_INPUT_BUCKETS``).
- Local paths under the configured roots only (``SEGMIND_INPUT_ROOTS``;
  the working directory when unset), after resolving ``..`` and symlinks.
- ``data:`` URIs (inline, nothing is fetched).

Everything else (``file://``, ``ftp://``, ``gopher://``, ``memory://`` when the
store is elsewhere...) is refused. Error messages name the URL without its
query string or user info, where presigned signatures and passwords live.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from segmind_core.errors import PermanentError
from segmind_core.tls import shared_tls_context

__all__ = [
    "ALLOW_NETWORKS_ENV",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "INPUT_BUCKETS_ENV",
    "INPUT_ROOTS_ENV",
    "FetchRefusedError",
    "InputPolicy",
    "TooLargeError",
    "check_address",
    "display_url",
    "fetch_http",
    "same_store_scheme",
]

INPUT_ROOTS_ENV = "SEGMIND_INPUT_ROOTS"
INPUT_BUCKETS_ENV = "SEGMIND_INPUT_BUCKETS"
ALLOW_NETWORKS_ENV = "SEGMIND_INPUT_ALLOW_NETWORKS"
MAX_BYTES_ENV = "SEGMIND_INPUT_MAX_BYTES"
TIMEOUT_ENV = "SEGMIND_INPUT_TIMEOUT_S"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0
MAX_REDIRECTS = 3
REMOTE_SCHEMES = frozenset({"http", "https"})
STORE_SCHEMES = frozenset({"s3", "s3a"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class FetchRefusedError(PermanentError, ValueError):
    """An input reference this worker will not read, or could not read within bounds."""


class TooLargeError(FetchRefusedError):
    """A download larger than the policy's ``max_bytes``."""


def display_url(url: str) -> str:
    """``url`` for messages: no user info, query or fragment (signatures, passwords)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed IPv6 literal
        return f"{url.split(':', 1)[0]}://(malformed URL)"
    if not parts.scheme or len(parts.scheme) == 1:
        return url
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":(invalid port)"
    if ":" in host:
        host = f"[{host}]"
    hidden = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_ALSO_REFUSED = (
    ipaddress.ip_network("::/96"),  # IPv4-compatible IPv6 (deprecated), e.g. ::7f00:1
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated, e.g. ::ffff:0:7f00:1
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated)
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
)


def _judged_addresses(address: str | IPAddress) -> list[IPAddress]:
    """The address, and every IPv4 address it carries (mapped, NAT64, 6to4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if not isinstance(ip, ipaddress.IPv6Address):
        return [ip]
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    found: list[IPAddress] = [ip]
    if any(ip in network for network in (*_NAT64, *_ALSO_REFUSED[:2])):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    return found


def check_address(address: str | IPAddress, allowed: Iterable[IPNetwork] = ()) -> None:
    """Refuse an address that is not public, unless it is in an ``allowed`` network.

    Not public: private (10/8, 172.16/12, 192.168/16, fc00::/7), loopback,
    link-local (169.254/16 with the cloud metadata service, fe80::/10),
    shared (100.64/10), multicast, reserved and unspecified addresses. An
    IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by
    that IPv4 address too.

    Raises:
        FetchRefusedError: naming the address and why.
    """
    allowed = tuple(allowed)
    for ip in _judged_addresses(address):
        _check_one(ip, allowed)


def _check_one(ip: IPAddress, allowed: tuple[IPNetwork, ...]) -> None:
    if any(ip in network for network in allowed if network.version == ip.version):
        return
    kind = None
    if ip.is_loopback:
        kind = "a loopback address"
    elif ip.is_link_local:
        kind = "a link-local address (cloud metadata services live there)"
    elif ip.is_multicast:
        kind = "a multicast address"
    elif ip.is_unspecified:
        kind = "the unspecified address"
    elif ip.is_private:
        kind = "a private address"
    elif not ip.is_global or any(ip in network for network in _ALSO_REFUSED):
        kind = "not a public address"
    if kind is not None:
        raise FetchRefusedError(
            f"{ip} is {kind}; inputs are fetched from public addresses only "
            f"(allow a network with {ALLOW_NETWORKS_ENV})"
        )


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{ALLOW_NETWORKS_ENV}: {item!r} is not an address or network"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class InputPolicy:
    """Where inputs may come from, and the bounds on reading one.

    Attributes:
        local_roots: Local files are read only under these folders.
        store_locations: Storage URLs (``s3://bucket`` or ``s3://bucket/prefix``)
            inputs may be read from besides the output storage's own location
            (its bucket and prefix).
        allowed_networks: Non-public networks that http(s) inputs may still use.
        max_bytes: Largest input read.
        timeout_s: Longest a download may take in all.
        resolver: Host name to addresses (the system's DNS by default).
    """

    local_roots: tuple[Path, ...] = ()
    store_locations: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    resolver: Resolver = field(default=_system_resolver, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InputPolicy:
        """The policy from ``SEGMIND_INPUT_*`` variables.

        ``SEGMIND_INPUT_ROOTS`` (folders separated by ``os.pathsep``; the working
        directory when unset), ``SEGMIND_INPUT_BUCKETS`` (storage URLs such as
        ``s3://bucket/prefix``, comma or space separated; none besides the output
        storage's own location when unset), ``SEGMIND_INPUT_ALLOW_NETWORKS`` (addresses or
        CIDR networks, comma or space separated; none when unset),
        ``SEGMIND_INPUT_MAX_BYTES`` and ``SEGMIND_INPUT_TIMEOUT_S``.

        Raises:
            ValueError: a variable that cannot be read.
        """
        env = os.environ if environ is None else environ
        roots_text = env.get(INPUT_ROOTS_ENV, "").strip()
        roots = (
            tuple(Path(part).expanduser() for part in roots_text.split(os.pathsep) if part.strip())
            if roots_text
            else (Path.cwd(),)
        )
        try:
            max_bytes = int(env.get(MAX_BYTES_ENV) or DEFAULT_MAX_BYTES)
            timeout_s = float(env.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
        except ValueError:
            raise ValueError(f"{MAX_BYTES_ENV} and {TIMEOUT_ENV} must be numbers") from None
        locations = tuple(
            part for part in env.get(INPUT_BUCKETS_ENV, "").replace(",", " ").split() if part
        )
        for location in locations:
            if len(urlsplit(location).scheme) <= 1 or not _store_location(location)[1]:
                raise ValueError(
                    f"{INPUT_BUCKETS_ENV}: {location!r} is not a storage URL like s3://bucket/prefix"
                )
        return cls(
            local_roots=roots,
            store_locations=locations,
            allowed_networks=_parse_networks(env.get(ALLOW_NETWORKS_ENV, "")),
            max_bytes=max_bytes,
            timeout_s=timeout_s,
        )

    def check_scheme(self, url: str, store_protocol: str | None = None) -> str:
        """The scheme of ``url`` when this policy reads it; ``""`` for a local path.

        Raises:
            FetchRefusedError: for any other scheme.
        """
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            raise FetchRefusedError(f"{display_url(url)} is not a valid URL") from None
        if len(scheme) <= 1:  # a path ("" or a Windows drive letter)
            return ""
        allowed = REMOTE_SCHEMES | STORE_SCHEMES | {"data"}
        if store_protocol and store_protocol != "file":  # local files go by the roots
            allowed |= {store_protocol}
        if scheme not in allowed:
            hint = " (give a plain path instead)" if scheme == "file" else ""
            raise FetchRefusedError(
                f"{scheme}:// inputs are not accepted{hint}: use http(s), s3, or a file "
                f"under {self.roots_text()}"
            )
        return scheme

    def check_store_url(self, url: str, store_protocol: str | None, store_root: str | None) -> None:
        """Refuse a storage URL outside the output storage's location and ``store_locations``.

        The worker reads storage URLs with its own credentials, which may reach
        buckets, and prefixes of a bucket, that the person who triggers a run may
        not read: only what is under the output storage's root (``bucket/prefix``:
        the flows' own files) and under the configured locations are inputs.

        Raises:
            FetchRefusedError: outside them, or with a ``..`` segment.
        """
        scheme, location = _store_location(url)
        if ".." in location.split("/"):
            raise FetchRefusedError(f"{display_url(url)} has a '..' segment")
        if "?" in url or "#" in url:
            # The check would read the key up to them; the filesystem reads them as key.
            raise FetchRefusedError(f"{display_url(url)} has '?' or '#' in its key")
        own_root = (store_root or "").strip("/")
        if store_protocol is not None and same_store_scheme(scheme, store_protocol):
            if not own_root and store_protocol != "file":
                return  # the store is a whole filesystem (memory://): the operator's own
            if own_root and _is_under(location, own_root):
                return
        for allowed in self.store_locations:
            allowed_scheme, allowed_location = _store_location(allowed)
            if same_store_scheme(scheme, allowed_scheme) and _is_under(location, allowed_location):
                return
        own = (
            f"the output storage's location, {store_protocol}://{own_root}"
            if own_root and store_protocol and store_protocol != "file"
            else "no output storage location"
        )
        extra = ", ".join(self.store_locations) or f"none in {INPUT_BUCKETS_ENV}"
        raise FetchRefusedError(
            f"{display_url(url)} is outside the storage inputs may be read from ({own}; "
            f"{extra}); set {INPUT_BUCKETS_ENV} to allow it"
        )

    def roots_text(self) -> str:
        """The local roots, for messages."""
        return ", ".join(str(root) for root in self.local_roots) or "(no local roots configured)"

    def check_local_path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` resolved (``..`` and symlinks followed), refused outside every root.

        Raises:
            FetchRefusedError: outside the roots.
        """
        resolved = Path(path).expanduser().resolve()
        for root in self.local_roots:
            if resolved.is_relative_to(root.expanduser().resolve()):
                return resolved
        raise FetchRefusedError(
            f"{path} is outside the folders inputs may be read from ({self.roots_text()}); "
            f"set {INPUT_ROOTS_ENV} to allow another"
        )

    def addresses(self, url: str) -> tuple[str, int, list[str]]:
        """Host, port and the checked addresses ``url`` would connect to.

        Raises:
            FetchRefusedError: a bad URL, a name that does not resolve, or any
                address refused by `check_address`.
        """
        try:
            parts = urlsplit(url)
        except ValueError:
            raise FetchRefusedError(f"{display_url(url)} is not a valid URL") from None
        _refuse_ambiguous(url, parts.netloc)
        scheme, host = parts.scheme.lower(), parts.hostname
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise FetchRefusedError(f"{display_url(url)} has an invalid port") from None
        if scheme not in REMOTE_SCHEMES or not host:
            raise FetchRefusedError(f"{display_url(url)} is not an http(s) URL with a host")
        try:
            found = [host] if _is_ip_literal(host) else self.resolver(host, port)
        except OSError as exc:
            raise FetchRefusedError(
                f"cannot resolve {host} ({type(exc).__name__}): the URL is unreachable"
            ) from None
        if not found:
            raise FetchRefusedError(f"{host} resolves to no address: the URL is unreachable")
        for address in found:
            check_address(address, self.allowed_networks)
        return host, port, found


def _store_location(url: str) -> tuple[str, str]:
    """``(scheme, "bucket/key...")`` of a storage URL, without a final ``/``."""
    parts = urlsplit(url)
    return parts.scheme.lower(), f"{parts.netloc}{parts.path}".strip("/")


def same_store_scheme(first: str, second: str) -> bool:
    """Whether two URL schemes name the same storage (``s3a`` is ``s3``)."""
    aliases = {"s3a": "s3"}
    return aliases.get(first.lower(), first.lower()) == aliases.get(second.lower(), second.lower())


def _is_under(location: str, folder: str) -> bool:
    """Whether ``bucket/key`` is ``folder`` or inside it (``a/b`` is not inside ``a/bc``)."""
    return location == folder or location.startswith(folder + "/")


def _refuse_ambiguous(url: str, netloc: str) -> None:
    r"""Refuse URLs that parsers read differently: the URL checked here is the one sent.

    The service fetches an http(s) input itself, with its own URL parser. A backslash
    (``http://127.0.0.1\@public.example/``: Python reads the host after the ``@``,
    a browser-style parser before it), user info, or whitespace and control
    characters could make it fetch a host other than the one checked here.

    Raises:
        FetchRefusedError: naming what is wrong.
    """
    control = next((i for i, c in enumerate(url) if ord(c) <= 0x20 or ord(c) == 0x7F), None)
    if "\\" in url:
        problem = "contains a backslash"
    elif "@" in netloc:
        problem = "has user info (user@host)"
    elif control is not None:
        problem = f"contains whitespace or a control character (at character {control + 1})"
    else:
        return
    raise FetchRefusedError(
        f"{display_url(url)} {problem}: not accepted as an input, since the service's URL "
        "parser could read its host differently; give the plain URL"
    )


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def fetch_http(
    url: str, policy: InputPolicy, *, transport: httpx.BaseTransport | None = None
) -> bytes:
    """GET ``url`` within ``policy``: checked addresses, bounded size, time and redirects.

    The connection goes to the address that was checked; the ``Host`` header
    and TLS server name stay the URL's host, so certificates are verified as usual.
    The time bound covers everything (headers trickled a byte at a time too):
    the download runs in a helper thread, and at the deadline the caller gets
    its error and the connection is closed under the thread.

    Raises:
        FetchRefusedError: refused, unreachable, not 200, too large or too slow.
    """
    deadline = time.monotonic() + policy.timeout_s
    clients = _Clients(policy.timeout_s, transport)
    outcome: list[bytes | BaseException] = []

    def download() -> None:
        try:
            outcome.append(_follow(clients, url, policy, deadline))
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)

    worker = threading.Thread(target=download, name="segmind-input-fetch", daemon=True)
    worker.start()
    worker.join(policy.timeout_s)
    finished = not worker.is_alive() and bool(outcome)
    clients.close()
    if not finished:
        raise FetchRefusedError(
            f"{display_url(url)} took more than {policy.timeout_s:g} s to download"
        )
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _proxy_for(url: str) -> str | None:
    """The proxy the environment sends ``url`` through (``HTTPS_PROXY``...), if any.

    Decided here once, by the ``NO_PROXY`` rules of the standard library; the
    client then uses exactly that proxy (it reads no environment of its own),
    so a URL is either pinned to its checked address or sent to the proxy,
    never to a name resolved again.
    """
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    # host:port, so that NO_PROXY entries with a port can match.
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    return proxy


class _Clients:
    """The direct client, and one client per proxy (made when first needed)."""

    def __init__(self, timeout_s: float, transport: httpx.BaseTransport | None) -> None:
        self._settings: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout_s),
            "follow_redirects": False,
            "trust_env": False,  # proxies are chosen by `_proxy_for`, nowhere else
            "verify": shared_tls_context(),
        }
        self.direct = httpx.Client(transport=transport, **self._settings)
        self._proxied: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def through(self, proxy: str) -> httpx.Client:
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = httpx.Client(proxy=proxy, **self._settings)
            return self._proxied[proxy]

    def close(self) -> None:
        with self._lock:
            clients = [self.direct, *self._proxied.values()]
        for client in clients:
            with contextlib.suppress(Exception):  # may be in use by a thread past its deadline
                client.close()


def _follow(clients: _Clients, url: str, policy: InputPolicy, deadline: float) -> bytes:
    """GET ``url``, following at most `MAX_REDIRECTS` redirects, each one checked.

    Directly, the connection goes to a checked address (each in turn until one
    answers). Through a proxy the proxy connects, by name: the addresses are
    still checked here first, and the proxy is the network's own egress control.
    """
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        host, _, addresses = policy.addresses(current)
        location = None
        for index, address in enumerate(addresses):
            try:
                with _get(clients, current, host, address) as response:
                    if not response.is_redirect:
                        if response.status_code != 200:
                            raise FetchRefusedError(
                                f"{display_url(current)} answered {response.status_code}"
                            )
                        return _bounded_body(response, current, policy, deadline)
                    location = response.headers.get("location", "")
                    break
            except httpx.ConnectError as exc:
                if index + 1 < len(addresses):
                    continue  # another checked address of the same host
                raise _unreachable(current, exc) from None
            except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
                raise _unreachable(current, exc) from None
        if location is None:
            raise FetchRefusedError(f"{display_url(current)} answered nothing")
        try:
            current = urljoin(current, location)
        except ValueError:
            message = f"{display_url(current)} redirects to a malformed URL"
            raise FetchRefusedError(message) from None
    raise FetchRefusedError(f"{display_url(url)} redirects more than {MAX_REDIRECTS} times")


def _unreachable(url: str, exc: BaseException) -> FetchRefusedError:
    return FetchRefusedError(
        f"cannot fetch {display_url(url)} ({type(exc).__name__}): the URL is unreachable"
    )


def _get(clients: _Clients, url: str, host: str, address: str) -> Any:
    """The streamed GET of ``url``: pinned to ``address``, or by name through a proxy."""
    headers = {"Accept-Encoding": "identity"}
    proxy = _proxy_for(url)
    if proxy is not None:
        return clients.through(proxy).stream("GET", url, headers=headers)
    ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    extensions = {"sni_hostname": ascii_host} if urlsplit(url).scheme == "https" else {}
    headers["Host"] = _host_header(url, ascii_host)
    pinned = _pinned_url(url, address)
    return clients.direct.stream("GET", pinned, headers=headers, extensions=extensions)


def _bounded_body(
    response: httpx.Response, url: str, policy: InputPolicy, deadline: float
) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise TooLargeError(
            f"{display_url(url)} is {declared} bytes; the limit is {policy.max_bytes}"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Asked for none; decoding one would let a few hundred bytes expand to gigabytes.
        raise FetchRefusedError(
            f"{display_url(url)} was sent {encoding}-encoded although none was asked for"
        )
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > policy.max_bytes:
            raise TooLargeError(
                f"{display_url(url)} is more than {policy.max_bytes} bytes, the limit"
            )
        if time.monotonic() > deadline:
            raise FetchRefusedError(
                f"{display_url(url)} took more than {policy.timeout_s:g} s to download"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _pinned_url(url: str, address: str) -> str:
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return parts._replace(netloc=netloc).geturl()


def _host_header(url: str, host: str) -> str:
    parts = urlsplit(url)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host
