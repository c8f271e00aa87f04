"""The emulator's HTTP server and the in-process handle that starts and stops it.

It speaks Segmind's contract (shared/DESIGN.md sections 3 and 4):

- ``POST /v1/{slug}``: the image bytes, with ``x-remaining-credits``, ``x-cost``,
  ``x-seed-value``, ``x-generation-time`` and ``x-request-id``.
- ``POST /v2/{slug}``, ``GET /v2/requests/{id}/status``, ``GET /v2/requests/{id}``:
  the queue; a FAILED job answers 422. Output images are served under
  ``/outputs/{id}.{png|jpg}`` without a key, like the service's public URLs.
- ``GET /_emulator/stats``, ``POST /_emulator/reset``, ``GET|POST /_emulator/faults``:
  control, without a key.

The standard library's threading HTTP server is used on purpose: the ``reset``,
``truncate`` and ``timeout`` faults need direct control of the socket.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from emulator.config import EmulatorConfig, FaultKind, check_fault_rates
from emulator.engine import ApiError, Engine
from emulator.faults import FaultInjector, FaultSettings
from emulator.jobs import JobQueue, JobStatus
from emulator.state import EmulatorState
from segmind_core.contract import ENDPOINTS, Endpoint

__all__ = ["SegmindEmulator"]

logger = logging.getLogger("emulator")

_MAX_BODY_BYTES = 64 * 1024 * 1024
_IDLE_CONNECTION_TIMEOUT_S = 120.0
_POLL_S = 0.05
_ERROR_TEXT = {
    FaultKind.RATE_LIMITED: (429, "rate limit exceeded"),
    FaultKind.SERVER_ERROR: (500, "Internal Server Error"),
    FaultKind.BAD_GATEWAY: (502, "Bad Gateway: the service is temporarily unavailable"),
    FaultKind.SERVICE_UNAVAILABLE: (503, "Service Unavailable: the service is down"),
    FaultKind.GATEWAY_TIMEOUT: (504, "Gateway Timeout: the request timed out"),
}
_METHOD_NOT_ALLOWED_HTML = (
    b"<html><head><title>405 Not Allowed</title></head>"
    b"<body><center><h1>405 Not Allowed</h1></center></body></html>"
)


class _Server(ThreadingHTTPServer):
    """Threading HTTP server that knows its emulator and its open connections."""

    daemon_threads = False  # ``server_close`` joins every handler thread
    block_on_close = True
    # socketserver's default backlog of 5 dropped and reset bursts of new connections.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], emulator: SegmindEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every handler blocked on a read, so that stopping never waits on a client."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def host_port(self) -> str:
        """``HOST:PORT`` of the bound socket, with brackets around an IPv6 address."""
        host, port = self.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else host
        return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One connection; `_dispatch` reads each request's body and `_route` answers it."""

    protocol_version = "HTTP/1.1"
    server_version = "segmind-emulator"
    sys_version = ""
    timeout = _IDLE_CONNECTION_TIMEOUT_S
    # Headers and body go out in two writes; with Nagle on, the client's delayed
    # ACK held the body back ~40 ms on every keep-alive answer.
    disable_nagle_algorithm = True
    server: _Server

    # Plumbing ------------------------------------------------------------

    @property
    def emu(self) -> SegmindEmulator:
        return self.server.emulator

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError):
            logger.debug("client connection dropped", exc_info=True)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._generation = False
        self._authenticated = False
        path = self.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        try:
            # Read the body before any answer, so a keep-alive connection stays in step.
            self._body = self._read_body()
            self._route(method, parts)
        except _Answered:
            pass
        except ApiError as exc:
            self._send_error(exc.status, exc.message)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            logger.exception("emulator bug while answering %s %s", method, path)
            self._send_error(500, f"emulator internal error: {type(exc).__name__}: {exc}")

    def _route(self, method: str, parts: list[str]) -> None:
        match parts:
            case ["v1", slug]:
                self._only(method, "POST")
                self._generation = True
                self._v1(slug)
            case ["v2", "requests", request_id, "status"]:
                self._only(method, "GET")
                self._v2_status(request_id)
            case ["v2", "requests", request_id]:
                self._only(method, "GET")
                self._v2_result(request_id)
            case ["v2", slug]:
                self._only(method, "POST")
                self._generation = True
                self._v2_submit(slug)
            case ["outputs", filename]:
                self._only(method, "GET")
                self._output(filename)
            case ["_emulator", "stats"]:
                self._only(method, "GET")
                self._send_json(200, self.emu.stats())
            case ["_emulator", "reset"]:
                self._only(method, "POST")
                self._control_reset()
            case ["_emulator", "faults"]:
                if method == "POST":
                    self._control_set_faults()
                else:
                    self._only(method, "GET")
                    self._send_json(200, self.emu.fault_settings())
            case [] | ["_emulator", "health"]:
                self._only(method, "GET")
                self._send_json(200, {"status": "ok", "service": "segmind-emulator"})
            case _:
                raise ApiError(404, f"Not Found: {self.path.split('?', 1)[0]}")

    def _only(self, method: str, allowed: str) -> None:
        if method != allowed:
            # The service answers a wrong verb with an HTML page, not JSON.
            self._send(405, _METHOD_NOT_ALLOWED_HTML, "text/html", {"Allow": allowed})
            raise _Answered

    # Sending -------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        outcome: str | None = None,
    ) -> None:
        if self._generation:
            self.emu.state.count_outcome(outcome or str(status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self._authenticated:
            self.send_header("x-remaining-credits", _money(self.emu.state.credits_remaining))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message}, headers)

    # Reading -------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length") from None
        if length > _MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"request body larger than {_MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _json_body(self, raw: bytes) -> dict[str, Any]:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("application/json"):
            raise ApiError(406, "Invalid content type")
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return payload

    def _authenticate(self) -> None:
        key = self.headers.get("x-api-key")
        if key is None:
            if self.headers.get("Authorization", "").lower().startswith("bearer"):
                raise ApiError(
                    401,
                    "Unauthorized: send the API key in the x-api-key header, not as a bearer token",
                )
            raise ApiError(401, "Missing Authorization or x-api-key in header")
        expected = self.emu.config.api_key.get_secret_value().encode()
        if not hmac.compare_digest(key.encode(), expected):
            raise ApiError(401, "Unauthorized. API key is invalid or may have expired")
        self._authenticated = True

    def _endpoint(self, slug: str) -> Endpoint:
        endpoint = ENDPOINTS.get(slug)
        if endpoint is None:
            raise ApiError(404, f"Model {slug!r} not found")
        return endpoint

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or self.server.host_port()}"

    # Limits and faults ---------------------------------------------------

    def _check_rate(self) -> None:
        reset_at = self.emu.state.try_accept_rate()
        if reset_at is not None:
            stamp = datetime.fromtimestamp(reset_at, UTC).isoformat(timespec="seconds")
            headers = {"x-rate-limit-reset-at-utc": stamp}
            headers.update(self._retry_after())
            rpm = self.emu.config.rpm
            raise _Refused(
                429, f"rate limit exceeded: more than {rpm} requests per minute", headers
            )

    def _retry_after(self) -> dict[str, str]:
        seconds = self.emu.faults.retry_after()
        return {} if seconds is None else {"Retry-After": str(seconds)}

    def _inject(self, fault: FaultKind, label: str | None = None) -> None:
        """Carry out every fault that happens before the request is processed."""
        self.emu.state.count_fault(label or fault.value)
        if fault in _ERROR_TEXT:
            status, message = _ERROR_TEXT[fault]
            headers = self._retry_after() if status == 429 else {}
            raise _Refused(status, message, headers)
        if fault is FaultKind.RESET:
            self._count_outcome(fault.value)
            self._abort_with_reset()
            raise _Answered
        if fault is FaultKind.TIMEOUT:
            self._count_outcome(fault.value)
            self._hold_unanswered()
            raise _Answered

    def _count_outcome(self, outcome: str) -> None:
        """Count how a generation request was answered (reads are not counted)."""
        if self._generation:
            self.emu.state.count_outcome(outcome)

    def _abort_with_reset(self) -> None:
        self.close_connection = True
        try:
            # Linger 0 makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass

    def _hold_unanswered(self) -> None:
        """Answer nothing until the client gives up, the hold ends or the emulator stops."""
        self.close_connection = True
        deadline = time.monotonic() + self.emu.config.timeout_hold_s
        while time.monotonic() < deadline and not self.emu.stopping.is_set():
            try:
                readable, _, _ = select.select([self.connection], [], [], _POLL_S)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return  # the client closed its end
            except OSError:
                return

    def _send_truncated(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str]
    ) -> None:
        """Announce the whole body, send half of it, and close the connection."""
        self._count_outcome(FaultKind.TRUNCATE.value)
        self._generation = False  # counted above, as the fault
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _admit(self, slug: str) -> tuple[Endpoint, dict[str, Any]]:
        """Steps every generation request takes before any work: returns the endpoint and body."""
        self.emu.state.count_request(slug)
        self._authenticate()
        endpoint = self._endpoint(slug)
        payload = self._json_body(self._body)
        self._check_rate()
        return endpoint, payload

    # v1 ------------------------------------------------------------------

    def _v1(self, slug: str) -> None:
        try:
            endpoint, payload = self._admit(slug)
            if not self.emu.state.try_enter():
                raise _Refused(
                    429,
                    "rate limit exceeded: too many requests in flight",
                    self._retry_after(),
                )
        except _Refused as refused:
            self._send_error(refused.status, refused.message, refused.headers)
            return
        # The call stops counting as in flight before its answer is sent: a client
        # that has the answer may start its next call at once (on a freed slot of a
        # shared limit, say) without the two ever counting as in flight together.
        answer: Callable[[], None]
        try:
            answer = self._v1_generate(endpoint, payload)
        except _Refused as refused:
            answer = functools.partial(
                self._send_error, refused.status, refused.message, refused.headers
            )
        finally:
            self.emu.state.leave()
        answer()

    def _v1_generate(self, endpoint: Endpoint, payload: dict[str, Any]) -> Callable[[], None]:
        """Produce the answer to a v1 call; returns what sends it (after the count drops)."""
        fault = self.emu.faults.draw()
        if fault is not None and fault is not FaultKind.TRUNCATE:
            self._inject(fault)
        engine = self.emu.engine
        request = engine.validate(endpoint, payload)
        engine.reserve(endpoint)
        try:
            generation = engine.produce(endpoint, request)
        except BaseException:
            engine.release(endpoint)
            raise
        headers = {
            "x-cost": _money(endpoint.price_usd),
            "x-seed-value": str(generation.seed),
            "x-generation-time": f"{generation.inference_time_s:.3f}",
            "x-request-id": str(uuid.uuid4()),
        }
        content_type = generation.output_format.content_type
        if fault is FaultKind.TRUNCATE:
            # Made, then cut on the way: billed only when the service is said to bill it.
            if self.emu.config.bill_cut_answers:
                engine.charge(endpoint)
            else:
                engine.release(endpoint)
            self.emu.state.count_fault(fault.value)
            headers["x-remaining-credits"] = _money(self.emu.state.credits_remaining)
            return functools.partial(
                self._send_truncated, 200, generation.image, content_type, headers
            )
        engine.charge(endpoint)
        return functools.partial(self._send, 200, generation.image, content_type, headers)

    # v2 ------------------------------------------------------------------

    def _v2_submit(self, slug: str) -> None:
        try:
            endpoint, payload = self._admit(slug)
            fault = self.emu.faults.draw()
            if fault is not None and fault is not FaultKind.TRUNCATE:
                self._inject(fault)
        except _Refused as refused:
            self._send_error(refused.status, refused.message, refused.headers)
            return
        if fault is FaultKind.TRUNCATE and not self.emu.config.bill_cut_answers:
            # Cut off before any job exists: the caller cannot know an id, so none is made.
            self.emu.state.count_fault(fault.value)
            body = json.dumps({"request_id": str(uuid.uuid4()), "status": "QUEUED"}).encode()
            self._send_truncated(200, body, "application/json", {})
            return
        # Input validation happens when the job runs: a bad body becomes a FAILED job.
        self.emu.engine.reserve(endpoint)
        job = self.emu.jobs.submit(endpoint, payload, self._base_url())
        base = f"{job.base_url}/v2/requests/{job.request_id}"
        answer = {
            "request_id": job.request_id,
            "status": JobStatus.QUEUED.value,
            "status_url": f"{base}/status",
            "response_url": base,
        }
        if fault is FaultKind.TRUNCATE:
            # The job runs (and is billed), but the caller never learns its id.
            self.emu.state.count_fault(fault.value)
            self._send_truncated(200, json.dumps(answer).encode(), "application/json", {})
            return
        self._send_json(200, answer)

    def _read_fault(self) -> FaultKind | None:
        """With ``queue_read_faults``: a fault for this free read, carried out unless a cut."""
        if not self.emu.config.queue_read_faults:
            return None
        fault = self.emu.faults.draw()
        if fault is not None and fault is not FaultKind.TRUNCATE:
            try:
                self._inject(fault, f"{fault.value} on read")
            except _Refused as refused:
                self._send_error(refused.status, refused.message, refused.headers)
                raise _Answered from None
        if fault is FaultKind.TRUNCATE:
            self.emu.state.count_fault(f"{fault.value} on read")
        return fault

    def _job_or_404(self, request_id: str) -> Any:
        self._authenticate()
        job = self.emu.jobs.get(request_id)
        if job is None:
            raise ApiError(404, f"Request {request_id} not found")
        return job

    def _v2_status(self, request_id: str) -> None:
        self._v2_answer(request_id, with_output=False)

    def _v2_result(self, request_id: str) -> None:
        self._v2_answer(request_id, with_output=True)

    def _v2_answer(self, request_id: str, *, with_output: bool) -> None:
        """The job's state; a FAILED job is answered with 422, as by the service."""
        job = self._job_or_404(request_id)
        fault = self._read_fault()
        body: dict[str, Any] = {"request_id": job.request_id, "status": job.status.value}
        if job.status is JobStatus.FAILED:
            body |= {"error": job.error, "metrics": job.metrics()}
            self._send_json(422, body)
            return
        if job.status is JobStatus.COMPLETED:
            if with_output:
                body["output"] = job.output_url
            body["metrics"] = job.metrics()
        if fault is FaultKind.TRUNCATE:
            self._send_truncated(200, json.dumps(body).encode(), "application/json", {})
            return
        self._send_json(200, body)

    def _output(self, filename: str) -> None:
        request_id, _, extension = filename.rpartition(".")
        job = self.emu.jobs.get(request_id)
        if (
            job is None
            or job.image is None
            or job.output_format is None
            or job.output_format.value != extension
        ):
            raise ApiError(404, f"Not Found: /outputs/{filename}")
        if self._read_fault() is FaultKind.TRUNCATE:
            self._send_truncated(200, job.image, job.output_format.content_type, {})
            return
        self._send(200, job.image, job.output_format.content_type)

    # Control -------------------------------------------------------------

    def _control_reset(self) -> None:
        raw = self._body
        credits: Decimal | None = None
        if raw.strip():
            try:
                body = json.loads(raw)
                if "credits_usd" in body:
                    credits = Decimal(str(body["credits_usd"]))
            except (json.JSONDecodeError, TypeError, InvalidOperation):
                raise ApiError(
                    400, 'reset takes an optional body {"credits_usd": number}'
                ) from None
            if credits is not None and credits < 0:
                raise ApiError(400, "credits_usd must not be negative")
        self.emu.reset(credits)
        self._send_json(200, self.emu.stats())

    def _control_set_faults(self) -> None:
        raw = self._body
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise TypeError
            self.emu.set_faults(**body)
        except (json.JSONDecodeError, TypeError, ValueError, ValidationError) as exc:
            raise ApiError(400, f"invalid fault settings: {exc}") from None
        self._send_json(200, self.emu.fault_settings())


class _Answered(Exception):  # noqa: N818 - control flow, not an error
    """The response has been sent (or deliberately withheld); stop handling."""


class _Refused(Exception):  # noqa: N818 - control flow, not an error
    """An early refusal that does not hold a concurrency slot."""

    def __init__(self, status: int, message: str, headers: dict[str, str]) -> None:
        self.status = status
        self.message = message
        self.headers = headers


def _money(amount: Decimal) -> str:
    return f"{amount:.2f}"


class SegmindEmulator:
    """A Segmind-compatible server on loopback, started in-process.

    Example:
        >>> with SegmindEmulator(api_key="test-key") as emulator:  # doctest: +SKIP
        ...     httpx.post(f"{emulator.url}/v1/p-image-edit", headers={"x-api-key": "test-key"},
        ...                json={"prompt": "...", "image_urls": [...]})

    Args:
        config: Full settings; or give the fields of `EmulatorConfig` as keywords.
    """

    def __init__(self, config: EmulatorConfig | None = None, **settings: Any) -> None:
        if config is None:
            config = EmulatorConfig(**settings)
        elif settings:
            config = config.model_copy(update=settings)
        self.config = config
        self.stopping = threading.Event()
        self.state = EmulatorState(config.credits_usd, config.max_concurrency, config.rpm)
        self.faults = FaultInjector(
            FaultSettings(
                rates=dict(config.faults),
                seed=config.fault_seed,
                retry_after_s=config.retry_after_s,
                retry_after_rate=config.retry_after_rate,
            )
        )
        self.engine = Engine(config, self.state, self.faults, self.stopping)
        self.jobs = JobQueue(
            self.engine,
            self.state,
            self.stopping,
            workers=config.max_concurrency,
            result_ttl_s=config.result_ttl_s,
        )
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        if self._httpd is None:
            raise RuntimeError("the emulator is not running")
        return f"http://{self._httpd.host_port()}"

    def start(self) -> SegmindEmulator:
        """Bind the socket and serve in a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("the emulator is already running")
        self._httpd = _Server((self.config.host, self.config.port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name="segmind-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end every open connection and worker, and free the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        self.jobs.close()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> SegmindEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counters as ``GET /_emulator/stats`` returns them."""
        return self.state.snapshot()

    def reset(self, credits_usd: Decimal | None = None) -> None:
        """Clear counters, finished jobs and the rate window; restart the fault sequence."""
        self.state.reset(credits_usd)
        self.faults.restart()
        self.jobs.clear()

    def fault_settings(self) -> dict[str, Any]:
        """The fault settings in force, as ``GET /_emulator/faults`` returns them."""
        settings = self.faults.settings
        return {
            "faults": {kind.value: rate for kind, rate in settings.rates.items()},
            "fault_seed": settings.seed,
            "retry_after_s": settings.retry_after_s,
            "retry_after_rate": settings.retry_after_rate,
        }

    def set_faults(
        self,
        faults: dict[str, float] | None = None,
        fault_seed: int | None = None,
        retry_after_s: int | None = None,
        retry_after_rate: float | None = None,
    ) -> None:
        """Change fault settings while running; omitted fields keep their value.

        The fault sequence restarts from ``fault_seed`` (or the current seed).

        Raises:
            ValueError: for unknown fault kinds or rates outside 0..1 or above 1 in sum.
        """
        current = self.faults.settings
        rates = current.rates
        if faults is not None:
            rates = {}
            for name, rate in faults.items():
                kind = FaultKind(str(name))
                if not isinstance(rate, int | float) or not 0 <= rate <= 1:
                    raise ValueError(f"rate for {name} must be a number between 0 and 1")
                rates[kind] = float(rate)
            check_fault_rates(rates)
        if retry_after_s is not None and (not isinstance(retry_after_s, int) or retry_after_s < 0):
            raise ValueError("retry_after_s must be a non-negative integer")
        if retry_after_rate is not None and not 0 <= retry_after_rate <= 1:
            raise ValueError("retry_after_rate must be between 0 and 1")
        self.faults.configure(
            FaultSettings(
                rates=rates,
                seed=current.seed if fault_seed is None else fault_seed,
                retry_after_s=current.retry_after_s if retry_after_s is None else retry_after_s,
                retry_after_rate=(
                    current.retry_after_rate if retry_after_rate is None else retry_after_rate
                ),
            )
        )
