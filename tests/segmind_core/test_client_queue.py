"""The client's queue mode (Segmind's v2 queue) against the emulator over real HTTP.

Billing is judged from the emulator's ``GET /_emulator/stats``: ``requests``
counts submissions (a poll is not a generation request), ``billed`` completed
jobs, ``jobs`` the v2 jobs by state (a ``/v1`` call makes no job).

The emulator injects its faults into generation requests only (a ``/v1`` call
or a ``/v2`` submission), never into polls or downloads; the faults of those
come from `Wire`, a wrapper of the real HTTP transport that can replace an
answer, raise a transport error, and records every request with its headers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from emulator import SegmindEmulator
from segmind_core.client import QUEUE_RESULT_TTL, QueuedRequest, RetryPolicy, SegmindClient
from segmind_core.errors import (
    NetworkError,
    PermanentError,
    QueuedResultExpiredError,
    RequestRejectedError,
    ServerError,
    TransientError,
)
from tests.conftest import EmulatorFactory
from tests.support import (
    decode,
    emulator_client,
    emulator_stats,
    file_server,
    image_uri,
    serving,
    wait_until,
)

KEY = "SG_queue_client_key_SECRET_3141"  # fake, recognisable on purpose
SLUG = "p-image-edit"
FAST = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.05)
INPUT = image_uri((220, 30, 30), (64, 48))


def body(seed: int | None = 1234, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": "make it pop", "image_urls": [INPUT], "aspect_ratio": "1:1"}
    if seed is not None:
        params["seed"] = seed
    return params | extra


def queue_client(base_url: str, **kwargs: Any) -> SegmindClient:
    """A queue-mode client that polls every 10 ms at first and backs off fast."""
    settings: dict[str, Any] = {
        "base_url": base_url,
        "retry": FAST,
        "queue": True,
        "poll_interval_s": 0.01,
        "logger": logging.getLogger("tests.segmind_core.client_queue"),
    }
    settings.update(kwargs)
    return SegmindClient(KEY, **settings)


def stats(emulator: SegmindEmulator) -> dict[str, Any]:
    return emulator_stats(emulator.url)


def job_status(emulator: SegmindEmulator, request_id: str) -> httpx.Response:
    with emulator_client(emulator.url, key=KEY) as client:
        return client.get(f"/v2/requests/{request_id}/status")


def completed_jobs(emulator: SegmindEmulator, count: int) -> dict[str, Any]:
    """The stats once ``count`` jobs are counted COMPLETED (the count moves just after)."""
    return wait_until(
        lambda: (s := stats(emulator))["jobs"].get("COMPLETED") == count and s,
        what=f"{count} completed job(s) being counted",
    )


class Crash(Exception):  # noqa: N818 - a simulated process death, not an error
    """Raised from ``on_submitted``: the process "dies" right after the submission."""


def crash_after_submission(emulator: SegmindEmulator, params: dict[str, Any]) -> QueuedRequest:
    """Submit ``params`` with a client that dies as soon as the queue accepted it."""
    recorded: list[QueuedRequest] = []

    def record_then_die(queued: QueuedRequest) -> None:
        recorded.append(queued)
        raise Crash

    with queue_client(emulator.url) as client, pytest.raises(Crash):
        client.generate(SLUG, params, on_submitted=record_then_die)
    assert len(recorded) == 1
    return recorded[0]


# A transport that records and breaks chosen answers ----------------------------------


def kind_of(request: httpx.Request) -> str:
    """``submit``, ``status``, ``result``, ``output`` or ``other``."""
    path = request.url.path
    if request.method == "POST" and path.startswith("/v2/"):
        return "submit"
    if path.startswith("/v2/requests/"):
        return "status" if path.endswith("/status") else "result"
    if path.startswith("/outputs/"):
        return "output"
    return "other"


class Wire(httpx.BaseTransport):
    """The real transport; records each request and plays scripted faults per request kind.

    ``faults[kind]`` is consumed one entry per request of that kind: ``"502"`` or
    ``"503"`` answer that status, ``"reset"`` raises a read error as a dropped
    connection does, ``"truncate"`` cuts the real answer's body in half, ``"404"``
    answers 404. Requests beyond the script go through untouched.
    """

    def __init__(
        self,
        faults: dict[str, list[str]] | None = None,
        rewrite: Callable[[httpx.Request, httpx.Response], httpx.Response] | None = None,
    ) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.faults = {kind: list(script) for kind, script in (faults or {}).items()}
        self.rewrite = rewrite
        self.seen: list[tuple[str, httpx.Request]] = []
        self.played: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = kind_of(request)
        with self._lock:
            self.seen.append((kind, request))
            script = self.faults.get(kind, [])
            fault = script.pop(0) if script else None
            if fault is not None:
                self.played.append((kind, fault))
        if fault == "reset":
            raise httpx.ReadError("simulated connection reset", request=request)
        if fault in ("404", "502", "503"):
            return httpx.Response(int(fault), json={"error": f"simulated {fault}"}, request=request)
        response = self._inner.handle_request(request)
        if fault is None and self.rewrite is None:
            return response
        content = response.read()
        response.close()
        if fault == "truncate":
            content = content[: len(content) // 2]
        replaced = httpx.Response(
            response.status_code,
            headers={"content-type": response.headers.get("content-type", "")},
            content=content,
            request=request,
        )
        return self.rewrite(request, replaced) if self.rewrite is not None else replaced

    def close(self) -> None:
        self._inner.close()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.seen]


# The happy path ---------------------------------------------------------------------


def test_queue_mode_submits_to_v2_polls_and_returns_the_image(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.1)
    wire = Wire()

    with queue_client(emulator.url, transport=wire) as client:
        result = client.generate(SLUG, body(seed=1234))

    image = decode(result.image)
    assert image.format == "PNG"
    assert image.size == (result.width, result.height) == (1024, 1024)
    assert result.seed == 1234
    assert result.parameters["seed"] == 1234
    assert result.credits_remaining == Decimal("99.99")
    assert result.cost_usd == Decimal("0.01")
    assert isinstance(result.request_id, str)
    assert result.request_id
    # The id is the queue's: the job is known by it, completed with that seed.
    with emulator_client(emulator.url, key=KEY) as api:
        job = api.get(f"/v2/requests/{result.request_id}").json()
    assert job["status"] == "COMPLETED"
    assert job["metrics"]["seed"] == 1234
    # Submitted once to /v2, polled, downloaded; /v1 never called.
    kinds = wire.kinds()
    assert kinds.count("submit") == 1
    assert kinds[0] == "submit"
    assert "status" in kinds
    assert kinds[-2:] == ["result", "output"]
    assert not any(r.url.path.startswith("/v1/") for _, r in wire.seen)
    # Attempts count the requests to the API (a download goes with its result).
    assert result.attempts == len(kinds) - kinds.count("output")
    snap = completed_jobs(emulator, 1)
    assert snap["billed"] == 1
    assert snap["requests"] == 1
    assert snap["by_status"] == {"200": 1}
    assert snap["jobs"] == {"QUEUED": 1, "COMPLETED": 1}, "a v1 call makes no job"
    assert Decimal(str(snap["credits_remaining"])) == Decimal("99.99")


def test_a_seed_drawn_client_side_is_the_one_the_queue_used(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    with queue_client(emulator.url) as client:
        result = client.generate(SLUG, body(seed=None))
    with emulator_client(emulator.url, key=KEY) as api:
        job = api.get(f"/v2/requests/{result.request_id}").json()

    assert 0 <= result.seed < 2**31
    assert result.seed == result.parameters["seed"] == job["metrics"]["seed"]


def test_on_submitted_is_told_the_request_before_its_result_exists(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.5)
    told: list[tuple[QueuedRequest, str, int]] = []

    def on_submitted(queued: QueuedRequest) -> None:
        answer = job_status(emulator, queued.request_id)
        told.append((queued, answer.json()["status"], stats(emulator)["billed"]))

    before = datetime.now(UTC)
    with queue_client(emulator.url) as client:
        result = client.generate(SLUG, body(), on_submitted=on_submitted)
    after = datetime.now(UTC)

    assert len(told) == 1
    queued, status_then, billed_then = told[0]
    assert status_then in {"QUEUED", "PROCESSING"}
    assert billed_then == 0
    assert queued.request_id == result.request_id
    assert queued.slug == SLUG
    assert queued.submitted_at.tzinfo is not None
    assert before <= queued.submitted_at <= after
    assert stats(emulator)["billed"] == 1


def test_the_slot_is_held_once_from_submission_to_result(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(api_key=KEY)
    events: list[str] = []

    @contextmanager
    def slot() -> Iterator[None]:
        events.append("enter")
        yield
        events.append("exit")

    with queue_client(emulator.url, attempt_slot=slot) as client:
        client.generate(SLUG, body(), on_submitted=lambda q: events.append("submitted"))

    assert events == ["enter", "submitted", "exit"]


def test_a_queued_request_round_trips_through_json() -> None:
    queued = QueuedRequest("abc-123", SLUG, datetime(2026, 3, 14, 9, 30, tzinfo=UTC))

    data = queued.to_json()

    assert data == {
        "request_id": "abc-123",
        "slug": SLUG,
        "submitted_at": "2026-03-14T09:30:00+00:00",
    }
    assert QueuedRequest.from_json(data) == queued
    with pytest.raises(ValueError, match="not a queued-request record"):
        QueuedRequest.from_json({"slug": SLUG})


# Resuming -----------------------------------------------------------------------------


def test_a_second_client_resumes_a_crashed_request_without_paying_again(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.2)
    queued = crash_after_submission(emulator, body(seed=77))
    assert stats(emulator)["requests"] == 1

    wire = Wire()
    with queue_client(emulator.url, transport=wire) as second:
        result = second.generate(SLUG, body(seed=77), resume=queued)

    assert result.request_id == queued.request_id
    assert result.seed == 77
    assert decode(result.image).size == (1024, 1024)
    assert "submit" not in wire.kinds()
    snap = completed_jobs(emulator, 1)
    assert snap["requests"] == 1
    assert snap["billed"] == 1
    assert snap["jobs"] == {"QUEUED": 1, "COMPLETED": 1}


def test_resume_works_from_a_client_not_in_queue_mode(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(api_key=KEY)
    queued = crash_after_submission(emulator, body(seed=78))

    with queue_client(emulator.url, queue=False) as v1_client:
        result = v1_client.generate(SLUG, body(seed=78), resume=queued)

    assert result.request_id == queued.request_id
    assert result.seed == 78
    snap = completed_jobs(emulator, 1)
    assert (snap["requests"], snap["billed"]) == (1, 1)


def test_resuming_reports_the_seed_the_queued_request_used(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    queued = crash_after_submission(emulator, body(seed=4321))

    # No seed this time: the client draws one, but the result is the submitted request's.
    with queue_client(emulator.url) as second:
        result = second.generate(SLUG, body(seed=None), resume=queued)

    assert result.seed == 4321
    assert stats(emulator)["billed"] == 1


def test_a_queue_timeout_keeps_the_request_for_a_free_retry(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.5)
    told: list[QueuedRequest] = []

    client = queue_client(emulator.url, queue_timeout_s=0.05)
    with client, pytest.raises(NetworkError) as caught:
        client.generate(SLUG, body(seed=5), on_submitted=told.append)

    assert isinstance(caught.value, TransientError), "a task retry must be allowed"
    assert told[0].request_id in caught.value.message
    assert "still" in caught.value.message
    assert "polls it again" in caught.value.message
    assert stats(emulator)["billed"] == 0

    with queue_client(emulator.url) as retry:
        result = retry.generate(SLUG, body(seed=5), resume=told[0])

    assert result.request_id == told[0].request_id
    snap = completed_jobs(emulator, 1)
    assert (snap["requests"], snap["billed"]) == (1, 1)


# Faults while polling -----------------------------------------------------------------


def test_faults_while_polling_and_downloading_are_retried_for_free(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY, latency_s=0.1)
    wire = Wire(
        {
            "status": ["502", "reset", "truncate"],
            "result": ["503", "reset"],
            "output": ["truncate", "502", "reset"],
        }
    )

    with queue_client(emulator.url, transport=wire) as client:
        result = client.generate(SLUG, body(seed=99))

    assert len(wire.played) == 8, wire.played
    assert decode(result.image).size == (1024, 1024)
    assert result.seed == 99
    kinds = wire.kinds()
    assert kinds.count("submit") == 1
    assert kinds.count("output") == 4
    assert result.attempts == len(kinds) - kinds.count("output")
    snap = completed_jobs(emulator, 1)
    assert snap["requests"] == 1
    assert snap["billed"] == 1
    assert snap["by_status"] == {"200": 1}


def test_a_fault_at_submission_is_retried_and_billed_once(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(api_key=KEY)
    wire = Wire({"submit": ["502", "reset"]})

    with queue_client(emulator.url, transport=wire) as client:
        result = client.generate(SLUG, body(seed=98))

    assert wire.played == [("submit", "502"), ("submit", "reset")]
    assert wire.kinds().count("submit") == 3
    assert result.seed == 98
    snap = completed_jobs(emulator, 1)
    # Neither fault reached the emulator: one submission, one job, one charge.
    assert (snap["requests"], snap["billed"]) == (1, 1)


def test_polls_that_outlive_the_budget_fail_transiently_and_a_resume_is_free(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    told: list[QueuedRequest] = []
    wire = Wire({"status": ["502", "502", "502"]})
    policy = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)

    client = queue_client(emulator.url, transport=wire, retry=policy)
    with client, pytest.raises(ServerError) as caught:
        client.generate(SLUG, body(seed=97), on_submitted=told.append)

    assert isinstance(caught.value, TransientError)
    assert caught.value.attempts == 3
    assert wire.kinds() == ["submit", "status", "status", "status"]

    with queue_client(emulator.url) as retry:
        result = retry.generate(SLUG, body(seed=97), resume=told[0])

    assert result.request_id == told[0].request_id
    snap = completed_jobs(emulator, 1)
    assert (snap["requests"], snap["billed"]) == (1, 1)


# A failed job -------------------------------------------------------------------------


def test_a_failed_job_is_rejected_with_the_queues_error_and_not_billed(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    told: list[QueuedRequest] = []

    # The contract takes any http URL; only the queue's worker finds it missing.
    with file_server({}) as base, queue_client(emulator.url) as client:
        missing = f"{base}/missing.png"
        with pytest.raises(RequestRejectedError) as caught:
            client.generate(SLUG, body(seed=3, image_urls=[missing]), on_submitted=told.append)

    assert len(told) == 1, "the failure comes from the queue, after the submission"
    with emulator_client(emulator.url, key=KEY) as api:
        failed = api.get(f"/v2/requests/{told[0].request_id}")
    assert failed.status_code == 422
    upstream = failed.json()["error"]
    assert "missing.png" in upstream
    assert "404" in upstream

    error = caught.value
    assert error.status == 422
    assert error.detail == upstream
    assert upstream in error.message
    assert "FAILED" in error.message
    assert told[0].request_id in error.message
    assert "not charged" in error.message
    assert KEY not in str(error)
    snap = stats(emulator)
    assert snap["billed"] == 0
    assert snap["requests"] == 1, "a permanent failure is not submitted again"
    assert snap["credits_reserved"] == 0
    assert snap["jobs"] == {"QUEUED": 1, "FAILED": 1}


# Expiry -------------------------------------------------------------------------------


def expired_request(start_emulator: EmulatorFactory) -> tuple[SegmindEmulator, QueuedRequest]:
    """A request that completed (and was paid) and whose result the queue then dropped."""
    emulator = start_emulator(api_key=KEY, result_ttl_s=0.2)
    queued = crash_after_submission(emulator, body(seed=11))
    wait_until(
        lambda: job_status(emulator, queued.request_id).status_code == 404,
        what="the result expiring",
    )
    assert stats(emulator)["billed"] == 1
    return emulator, queued


def test_a_result_gone_after_an_hour_raises_a_clear_expiry_error(
    start_emulator: EmulatorFactory,
) -> None:
    emulator, queued = expired_request(start_emulator)
    old = replace(queued, submitted_at=datetime.now(UTC) - timedelta(hours=2))

    with queue_client(emulator.url) as client, pytest.raises(QueuedResultExpiredError) as caught:
        client.generate(SLUG, body(seed=11), resume=old)

    error = caught.value
    assert isinstance(error, PermanentError)
    assert not isinstance(error, RequestRejectedError)
    assert error.request_id == queued.request_id
    assert error.status == 404
    assert error.slug == SLUG
    message = error.message
    assert queued.request_id in message
    assert "expired" in message
    assert "Segmind keeps results for 1 hour" in message
    assert "2.0 h ago" in message
    assert "pays again" in message
    assert KEY not in str(error)
    snap = stats(emulator)
    assert (snap["requests"], snap["billed"]) == (1, 1), "nothing was submitted again"


def test_a_recent_request_the_queue_does_not_know_is_rejected_not_expired(
    start_emulator: EmulatorFactory,
) -> None:
    emulator, queued = expired_request(start_emulator)
    recent = replace(queued, submitted_at=datetime.now(UTC))

    with queue_client(emulator.url) as client, pytest.raises(RequestRejectedError) as caught:
        client.generate(SLUG, body(seed=11), resume=recent)

    assert not isinstance(caught.value, QueuedResultExpiredError)
    assert caught.value.status == 404
    assert queued.request_id in caught.value.message
    assert "another key or base URL" in caught.value.message
    assert stats(emulator)["requests"] == 1


def test_the_expiry_threshold_is_one_hour(start_emulator: EmulatorFactory) -> None:
    emulator, queued = expired_request(start_emulator)
    assert timedelta(hours=1) == QUEUE_RESULT_TTL
    just_under = replace(queued, submitted_at=datetime.now(UTC) - timedelta(minutes=59))
    just_over = replace(queued, submitted_at=datetime.now(UTC) - timedelta(minutes=61))

    with queue_client(emulator.url) as client:
        with pytest.raises(RequestRejectedError):
            client.generate(SLUG, body(seed=11), resume=just_under)
        with pytest.raises(QueuedResultExpiredError):
            client.generate(SLUG, body(seed=11), resume=just_over)


def test_an_output_image_gone_after_an_hour_is_an_expiry_too(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    queued = crash_after_submission(emulator, body(seed=12))
    completed_jobs(emulator, 1)
    old = replace(queued, submitted_at=datetime.now(UTC) - timedelta(hours=3))
    # The status and the result still answer; the output host has dropped the image.
    wire = Wire({"output": ["404"]})

    client = queue_client(emulator.url, transport=wire)
    with client, pytest.raises(QueuedResultExpiredError) as caught:
        client.generate(SLUG, body(seed=12), resume=old)

    assert caught.value.request_id == queued.request_id
    assert wire.kinds()[-1] == "output"
    assert wire.kinds().count("output") == 1, "an expiry is not retried"


# The key stays with the API -----------------------------------------------------------


@contextmanager
def recording_host(image: dict[str, bytes]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An output host on 127.0.0.1 serving ``image["bytes"]`` at any path; yields its
    URL and the headers of every request it received, as they arrived."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append({name.lower(): value for name, value in self.headers.items()})
            data = image["bytes"]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        yield f"{base_url}", received


def test_the_key_goes_to_the_api_and_never_to_the_output_host(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    served: dict[str, bytes] = {}

    with recording_host(served) as (cdn, received):

        def to_cdn(request: httpx.Request, response: httpx.Response) -> httpx.Response:
            """Move the output to another host, as Segmind's outputs live on a CDN."""
            if kind_of(request) != "result":
                return response
            answer = response.json()
            served["bytes"] = httpx.get(answer["output"], timeout=10.0).content
            answer["output"] = f"{cdn}/outputs/{answer['request_id']}.png"
            return httpx.Response(200, json=answer, request=request)

        wire = Wire(rewrite=to_cdn)
        with queue_client(emulator.url, transport=wire) as client:
            result = client.generate(SLUG, body(seed=21))

    assert result.image == served["bytes"]
    assert len(received) == 1, "the output was downloaded from the other host"
    assert "x-api-key" not in received[0]
    assert KEY not in " ".join(received[0].values())
    downloads = [r for kind, r in wire.seen if kind == "output"]
    assert [str(r.url).startswith(cdn) for r in downloads] == [True]
    assert "x-api-key" not in downloads[0].headers
    # The API calls did carry it (so the check above can fail).
    api_calls = [r for kind, r in wire.seen if kind in ("submit", "status", "result")]
    assert api_calls
    assert all(r.headers.get("x-api-key") == KEY for r in api_calls)


def test_the_key_is_not_sent_when_the_output_is_on_the_api_host(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(api_key=KEY)
    wire = Wire()

    with queue_client(emulator.url, transport=wire) as client:
        client.generate(SLUG, body(seed=22))

    outputs = [r for kind, r in wire.seen if kind == "output"]
    assert len(outputs) == 1
    assert "x-api-key" not in outputs[0].headers
    assert KEY not in str(outputs[0].headers.raw)


def test_the_emulator_serves_outputs_without_a_key_so_none_is_needed(
    start_emulator: EmulatorFactory,
) -> None:
    # The premise of the two tests above: a download without the key succeeds.
    emulator = start_emulator(api_key=KEY)
    with queue_client(emulator.url) as client:
        result = client.generate(SLUG, body(seed=23))
    with emulator_client(emulator.url, key=KEY) as api:
        output = api.get(f"/v2/requests/{result.request_id}").json()["output"]
    answer = httpx.get(output, timeout=10.0)
    assert answer.status_code == 200
    assert answer.content == result.image
