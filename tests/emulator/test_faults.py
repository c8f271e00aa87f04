"""Injected faults: each kind over real HTTP, seeded sequences, run-time changes."""

from __future__ import annotations

import json
import select
import socket
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from emulator import EmulatorConfig, FaultKind, SegmindEmulator
from emulator.config import parse_fault_spec
from emulator.faults import FaultInjector, FaultSettings
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, emulator_client, emulator_stats, image_uri, wait_until

BODY = {
    "prompt": "make it pop",
    "image_urls": [image_uri((220, 30, 30), (64, 48))],
    "aspect_ratio": "1:1",
}
TRANSPORT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)


def stats(emulator: SegmindEmulator) -> dict[str, Any]:
    return emulator_stats(emulator.url)


def generate(
    emulator: SegmindEmulator, *, api: str = "v1", timeout: float = 30.0
) -> httpx.Response:
    """One generation request (each on its own connection, so faults never spill over)."""
    with emulator_client(emulator.url, timeout=timeout) as client:
        return client.post(f"/{api}/p-image-edit", json=BODY)


def outcomes(emulator: SegmindEmulator, count: int) -> list[str]:
    """Status codes of ``count`` sequential requests."""
    with emulator_client(emulator.url) as client:
        return [str(client.post("/v1/p-image-edit", json=BODY).status_code) for _ in range(count)]


def control(emulator: SegmindEmulator, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with emulator_client(emulator.url, key=None) as client:
        return client.request(method, path, **kwargs)


def raw_request(emulator: SegmindEmulator, path: str, payload: dict[str, Any]) -> socket.socket:
    """Send a request on a plain socket and return it, unread."""
    url = httpx.URL(emulator.url)
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nx-api-key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection((url.host, url.port), timeout=10.0)
    sock.sendall(head + body)
    return sock


def assert_not_billed(emulator: SegmindEmulator) -> None:
    snap = stats(emulator)
    assert snap["billed"] == 0
    assert snap["spent_usd"] == 0
    assert snap["credits_remaining"] == 100
    assert snap["credits_reserved"] == 0


# Each kind over HTTP --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("429", "rate limit"),
        ("500", "Internal Server Error"),
        ("502", "Bad Gateway"),
        ("503", "Service Unavailable"),
        ("504", "Gateway Timeout"),
    ],
)
def test_error_faults_answer_their_status_with_a_json_error(
    start_emulator: EmulatorFactory, kind: str, text: str
) -> None:
    emulator = start_emulator(faults={kind: 1.0})

    response = generate(emulator)

    assert response.status_code == int(kind)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert text in body["error"]
    snap = stats(emulator)
    assert snap["faults_injected"] == {kind: 1}
    assert snap["by_status"] == {kind: 1}
    assert_not_billed(emulator)


def test_reset_fault_drops_the_connection(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"reset": 1.0})

    with pytest.raises(TRANSPORT_ERRORS):
        generate(emulator)

    snap = wait_until(
        lambda: (s := stats(emulator))["in_flight"] == 0 and s, what="the slot being given back"
    )
    assert snap["faults_injected"] == {"reset": 1}
    assert snap["by_status"] == {"reset": 1}
    assert_not_billed(emulator)


def test_truncate_fault_cuts_the_body_in_half(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"truncate": 1.0})

    with pytest.raises(httpx.RemoteProtocolError):
        generate(emulator)

    with raw_request(emulator, "/v1/p-image-edit", BODY) as sock:
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    announced = int(headers["content-length"])
    assert headers["content-type"] == "image/png"
    assert 0 < len(body) < announced
    assert len(body) == announced // 2

    snap = stats(emulator)
    assert snap["faults_injected"] == {"truncate": 2}
    assert snap["by_status"] == {"truncate": 2}
    assert_not_billed(emulator)


def test_timeout_fault_never_answers_and_frees_the_slot(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"timeout": 1.0})

    with pytest.raises(httpx.ReadTimeout):
        generate(emulator, timeout=0.5)

    wait_until(lambda: stats(emulator)["in_flight"] == 0, what="in_flight returning to 0")
    snap = stats(emulator)
    assert snap["faults_injected"] == {"timeout": 1}
    assert snap["by_status"] == {"timeout": 1}
    assert_not_billed(emulator)


def test_timeout_fault_holds_the_request_in_flight_until_the_client_leaves(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(faults={"timeout": 1.0})
    sock = raw_request(emulator, "/v1/p-image-edit", BODY)
    try:
        wait_until(
            lambda: stats(emulator)["faults_injected"].get("timeout") == 1,
            what="the timeout fault being drawn",
        )
        assert stats(emulator)["in_flight"] == 1
        readable, _, _ = select.select([sock], [], [], 0)
        assert not readable, "nothing has been answered"
    finally:
        sock.close()
    wait_until(lambda: stats(emulator)["in_flight"] == 0, what="in_flight returning to 0")


def test_timeout_fault_ends_after_the_hold(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"timeout": 1.0}, timeout_hold_s=0.3)

    with pytest.raises(httpx.RemoteProtocolError):
        generate(emulator, timeout=10.0)

    wait_until(lambda: stats(emulator)["in_flight"] == 0, what="in_flight returning to 0")


def test_stopping_ends_a_held_request_promptly(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"timeout": 1.0})
    with raw_request(emulator, "/v1/p-image-edit", BODY) as sock:
        wait_until(lambda: stats(emulator)["in_flight"] == 1, what="the request being held")
        started = time.monotonic()
        emulator.stop()
        assert time.monotonic() - started < 5.0
        assert sock.recv(1024) == b"", "the held connection is closed without an answer"


# Seeded sequences -----------------------------------------------------------


def test_same_seed_gives_the_same_sequence(start_emulator: EmulatorFactory) -> None:
    settings = {"faults": {"500": 0.3, "502": 0.2}, "fault_seed": 1234}
    first = outcomes(start_emulator(**settings), 24)
    second = outcomes(start_emulator(**settings), 24)

    assert first == second
    assert set(first) == {"200", "500", "502"}, "the rates give a mix"


def test_different_seeds_give_different_sequences(start_emulator: EmulatorFactory) -> None:
    rates = {"500": 0.3, "502": 0.2}
    first = outcomes(start_emulator(faults=rates, fault_seed=1), 24)
    second = outcomes(start_emulator(faults=rates, fault_seed=2), 24)
    assert first != second


def test_reset_restarts_the_seeded_sequence(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"500": 0.3, "502": 0.2}, fault_seed=99)
    first = outcomes(emulator, 16)
    assert control(emulator, "POST", "/_emulator/reset").status_code == 200
    assert outcomes(emulator, 16) == first


def test_faults_injected_counts_every_kind(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"429": 0.25, "500": 0.25, "504": 0.25}, fault_seed=7)
    seen = Counter(outcomes(emulator, 24))

    snap = stats(emulator)
    assert snap["faults_injected"] == {k: v for k, v in seen.items() if k != "200"}
    assert snap["billed"] == seen["200"]
    assert snap["requests"] == 24


# Run-time changes -----------------------------------------------------------


def test_faults_can_be_changed_while_running(emulator: SegmindEmulator) -> None:
    faults = "/_emulator/faults"
    assert generate(emulator).status_code == 200

    changed = control(emulator, "POST", faults, json={"faults": {"502": 1.0}, "fault_seed": 5})
    assert changed.status_code == 200
    assert changed.json()["faults"] == {"502": 1.0}
    assert changed.json()["fault_seed"] == 5
    assert control(emulator, "GET", faults).json()["faults"] == {"502": 1.0}
    assert generate(emulator).status_code == 502

    assert control(emulator, "POST", faults, json={"faults": {}}).status_code == 200
    assert generate(emulator).status_code == 200
    assert stats(emulator)["faults_injected"] == {"502": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"faults": {"418": 0.5}},
        {"faults": {"500": 1.5}},
        {"faults": {"500": -0.1}},
        {"faults": {"500": 0.6, "502": 0.6}},
        {"faults": {"500": "often"}},
        {"retry_after_rate": 2},
        {"retry_after_s": -1},
        {"no_such_setting": 1},
        ["500"],
    ],
    ids=[
        "unknown-kind",
        "rate-above-1",
        "negative-rate",
        "sum-above-1",
        "rate-not-a-number",
        "retry-after-rate-above-1",
        "negative-retry-after",
        "unknown-setting",
        "not-an-object",
    ],
)
def test_invalid_fault_settings_are_rejected(emulator: SegmindEmulator, body: Any) -> None:
    faults = "/_emulator/faults"
    assert control(emulator, "POST", faults, json={"faults": {"500": 0.1}}).status_code == 200

    response = control(emulator, "POST", faults, json=body)

    assert response.status_code == 400
    assert "invalid fault settings" in response.json()["error"]
    assert control(emulator, "GET", faults).json()["faults"] == {"500": 0.1}, (
        "the settings are unchanged"
    )


# Retry-After ----------------------------------------------------------------


def test_retry_after_is_sent_when_configured(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"429": 1.0}, retry_after_s=7)
    response = generate(emulator)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


def test_retry_after_is_absent_by_default(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"429": 1.0})
    response = generate(emulator)
    assert response.status_code == 429
    assert "retry-after" not in response.headers


def test_retry_after_only_on_429(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"500": 1.0}, retry_after_s=7)
    response = generate(emulator)
    assert response.status_code == 500
    assert "retry-after" not in response.headers


def test_retry_after_rate_gives_a_repeatable_mix(start_emulator: EmulatorFactory) -> None:
    def headers_seen() -> list[str | None]:
        emulator = start_emulator(
            faults={"429": 1.0}, retry_after_s=3, retry_after_rate=0.5, fault_seed=11
        )
        answers = [generate(emulator) for _ in range(16)]
        assert {a.status_code for a in answers} == {429}
        return [a.headers.get("retry-after") for a in answers]

    first = headers_seen()
    assert set(first) == {"3", None}
    assert headers_seen() == first


def test_retry_after_can_be_switched_on_at_run_time(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"429": 1.0})
    assert "retry-after" not in generate(emulator).headers

    changed = control(emulator, "POST", "/_emulator/faults", json={"retry_after_s": 2})
    assert changed.status_code == 200
    assert changed.json()["retry_after_s"] == 2
    assert changed.json()["faults"] == {"429": 1.0}, "omitted settings keep their value"
    assert generate(emulator).headers["retry-after"] == "2"


# v2 submit ------------------------------------------------------------------


def test_error_faults_apply_to_v2_submit(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(faults={"502": 1.0})

    response = generate(emulator, api="v2")

    assert response.status_code == 502
    assert "error" in response.json()
    snap = stats(emulator)
    assert snap["faults_injected"] == {"502": 1}
    assert snap["jobs"] == {}, "no job was queued"
    assert_not_billed(emulator)


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_connection_faults_apply_to_v2_submit(start_emulator: EmulatorFactory, kind: str) -> None:
    emulator = start_emulator(faults={kind: 1.0})

    with pytest.raises(TRANSPORT_ERRORS):
        generate(emulator, api="v2")

    snap = wait_until(
        lambda: (s := stats(emulator))["faults_injected"].get(kind) == 1 and s,
        what="the fault being counted",
    )
    assert snap["jobs"] == {}, "no job was queued"
    assert_not_billed(emulator)


def test_a_cut_v1_answer_is_billed_when_the_service_is_said_to_bill_it(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(faults={"truncate": 1.0}, bill_cut_answers=True)

    with pytest.raises(httpx.RemoteProtocolError):
        generate(emulator)

    snap = stats(emulator)
    assert snap["faults_injected"] == {"truncate": 1}
    assert snap["billed"] == 1


def test_a_cut_v2_submission_runs_its_job_when_cut_answers_are_billed(
    start_emulator: EmulatorFactory,
) -> None:
    # The queue accepted the job; only the answer naming it was lost.
    emulator = start_emulator(faults={"truncate": 1.0}, bill_cut_answers=True)

    with pytest.raises(TRANSPORT_ERRORS):
        generate(emulator, api="v2")

    snap = wait_until(
        lambda: (s := stats(emulator))["jobs"].get("COMPLETED") == 1 and s,
        what="the job of the cut submission completing",
    )
    assert snap["jobs"] == {"QUEUED": 1, "COMPLETED": 1}
    assert snap["billed"] == 1


def completed_job(emulator: SegmindEmulator) -> tuple[str, str]:
    """Submit a job (no fault in force) and wait for it: its status path and output path."""
    with emulator_client(emulator.url) as client:
        request_id = client.post("/v2/p-image-edit", json=BODY).json()["request_id"]
        status_path = f"/v2/requests/{request_id}/status"
        wait_until(
            lambda: client.get(status_path).json()["status"] == "COMPLETED",
            what="the job completing",
        )
        output = client.get(f"/v2/requests/{request_id}").json()["output"]
    return status_path, str(output).removeprefix(emulator.url)


@pytest.mark.parametrize("kind", ["500", "429", "reset", "truncate"])
def test_queue_read_faults_hit_polls_and_downloads_and_cost_nothing(
    start_emulator: EmulatorFactory, kind: str
) -> None:
    emulator = start_emulator(queue_read_faults=True)
    paths = completed_job(emulator)
    emulator.set_faults(faults={kind: 1.0})

    for path in paths:
        with emulator_client(emulator.url) as client:
            if kind in ("reset", "truncate"):
                with pytest.raises(TRANSPORT_ERRORS):
                    client.get(path)
            else:
                assert client.get(path).status_code == int(kind)

    snap = stats(emulator)
    assert snap["faults_injected"] == {f"{kind} on read": 2}
    assert snap["by_status"] == {"200": 1}  # the submission; reads are not generations
    assert snap["billed"] == 1


def test_without_queue_read_faults_reads_never_fail(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator()
    paths = completed_job(emulator)
    emulator.set_faults(faults={"500": 1.0})

    with emulator_client(emulator.url) as client:
        assert [client.get(path).status_code for path in paths] == [200, 200]
    assert stats(emulator)["faults_injected"] == {}


# Units ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("500=0.1", (FaultKind.SERVER_ERROR, 0.1)),
        ("429=1", (FaultKind.RATE_LIMITED, 1.0)),
        ("reset=0", (FaultKind.RESET, 0.0)),
        (" timeout =0.25", (FaultKind.TIMEOUT, 0.25)),
        ("truncate=0.5", (FaultKind.TRUNCATE, 0.5)),
    ],
)
def test_parse_fault_spec(spec: str, expected: tuple[FaultKind, float]) -> None:
    assert parse_fault_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("500", "CODE=RATE"),
        ("418=0.1", "unknown fault"),
        ("500=often", "not a number"),
        ("500=1.5", "between 0 and 1"),
        ("500=-0.1", "between 0 and 1"),
    ],
)
def test_parse_fault_spec_rejects(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault_spec(spec)


def test_config_rejects_rates_above_1_in_sum() -> None:
    with pytest.raises(ValidationError, match="add up to"):
        EmulatorConfig(api_key=API_KEY, faults={"500": 0.6, "502": 0.5})


def _injector(rates: dict[FaultKind, float], seed: int | None) -> FaultInjector:
    return FaultInjector(
        FaultSettings(rates=rates, seed=seed, retry_after_s=None, retry_after_rate=1.0)
    )


def test_fault_injector_is_deterministic_for_a_seed() -> None:
    rates = {FaultKind.SERVER_ERROR: 0.3, FaultKind.RESET: 0.2}
    first = _injector(rates, 42)
    second = _injector(rates, 42)

    draws = [first.draw() for _ in range(500)]
    assert draws == [second.draw() for _ in range(500)]

    counts = Counter(draws)
    assert set(counts) == {FaultKind.SERVER_ERROR, FaultKind.RESET, None}
    assert 110 <= counts[FaultKind.SERVER_ERROR] <= 190
    assert 60 <= counts[FaultKind.RESET] <= 140

    first.restart()
    assert [first.draw() for _ in range(500)] == draws, "restart replays the sequence"


def test_fault_injector_extremes() -> None:
    always = _injector({FaultKind.GATEWAY_TIMEOUT: 1.0}, None)
    never = _injector({}, None)
    assert {always.draw() for _ in range(50)} == {FaultKind.GATEWAY_TIMEOUT}
    assert {never.draw() for _ in range(50)} == {None}
    assert always.retry_after() is None
    assert always.jitter(0) == 0.0
    assert all(0.0 <= always.jitter(0.5) <= 0.5 for _ in range(50))


def test_fault_injector_configure_rejects_rates_above_1() -> None:
    injector = _injector({}, 1)
    with pytest.raises(ValueError, match="add up to"):
        injector.configure(
            FaultSettings(
                rates={FaultKind.SERVER_ERROR: 0.7, FaultKind.RESET: 0.7},
                seed=1,
                retry_after_s=None,
                retry_after_rate=1.0,
            )
        )
    assert injector.settings.rates == {}
