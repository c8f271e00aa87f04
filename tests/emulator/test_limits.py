"""The concurrency cap and the per-minute rate cap."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from emulator.state import EmulatorState
from tests.conftest import EmulatorFactory
from tests.support import burst, emulator_client, emulator_stats, image_uri, wait_until

BODY = {
    "prompt": "make it pop",
    "image_urls": [image_uri((220, 30, 30), (64, 48))],
    "aspect_ratio": "1:1",
}


def generate(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/p-image-edit", json=BODY)


def test_v1_beyond_the_concurrency_cap_answers_429(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(max_concurrency=4, latency_s=0.5, retry_after_s=3)

    answers = burst(emulator.url, 16, generate)

    codes = [a.status_code for a in answers]
    ok, limited = codes.count(200), codes.count(429)
    assert ok + limited == 16, codes
    assert ok >= 4
    assert limited >= 1
    for answer in answers:
        if answer.status_code == 429:
            assert "in flight" in answer.json()["error"]
            assert answer.headers["retry-after"] == "3"

    # A slot is given back before its answer is sent.
    snap = wait_until(
        lambda: (s := emulator_stats(emulator.url))["in_flight"] == 0 and s,
        what="every slot being given back",
    )
    assert snap["max_in_flight"] == 4, "16 overlapping calls fill the cap, and never pass it"
    assert snap["billed"] == ok, "429s are not billed"
    assert snap["by_status"] == {"200": ok, "429": limited}


def test_a_call_made_as_soon_as_the_last_answer_arrived_is_never_refused(
    start_emulator: EmulatorFactory,
) -> None:
    """The in-flight count drops before the answer goes out, so a client that keeps one
    call in flight (the next on a new connection the moment it has the answer) never
    counts as two: what a shared limit's slot hand-over does."""
    emulator = start_emulator(max_concurrency=1)

    codes = []
    for _ in range(150):
        with emulator_client(emulator.url) as client:  # a new connection each time
            codes.append(generate(client).status_code)

    assert Counter(codes) == {200: 150}
    assert emulator_stats(emulator.url)["max_in_flight"] == 1


def test_a_burst_of_new_connections_is_answered_at_once(start_emulator: EmulatorFactory) -> None:
    """16 requests, each opening its connection at the same moment, all meet the cap together.

    They arrive within a few milliseconds, while the first 4 hold every slot for
    2 s (a wide margin for a loaded CI machine): exactly 4 succeed and 12 get 429.
    A connection the server left in its listen queue would arrive a second or
    more later (the client's SYN retransmission) and succeed instead, or be reset.
    """
    emulator = start_emulator(max_concurrency=4, latency_s=2.0)
    barrier = threading.Barrier(16)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)

    def call(client: httpx.Client) -> str:
        barrier.wait(timeout=10)
        try:
            return str(generate(client).status_code)
        except httpx.TransportError as exc:
            return type(exc).__name__

    with (
        emulator_client(emulator.url, limits=limits) as client,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        outcomes = Counter(pool.map(lambda _: call(client), range(16)))

    assert outcomes == {"200": 4, "429": 12}


def test_rpm_cap_answers_429_with_the_reset_time(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(rpm=3)
    before = datetime.now(UTC).replace(microsecond=0)

    with emulator_client(emulator.url) as client:
        codes = [client.post("/v1/p-image-edit", json=BODY).status_code for _ in range(3)]
        limited = client.post("/v1/p-image-edit", json=BODY)
        status_not_limited = client.get("/_emulator/stats")

    assert codes == [200, 200, 200]
    assert limited.status_code == 429
    assert "3 requests per minute" in limited.json()["error"]
    assert "retry-after" not in limited.headers, "no Retry-After unless configured"
    reset_at = datetime.fromisoformat(limited.headers["x-rate-limit-reset-at-utc"])
    assert reset_at.tzinfo is not None
    # The window frees up one minute after the first accepted request.
    assert before.timestamp() + 59 <= reset_at.timestamp() <= time.time() + 61
    assert status_not_limited.status_code == 200, "control endpoints are not rate limited"

    snap = emulator_stats(emulator.url)
    assert snap["billed"] == 3
    assert snap["by_status"] == {"200": 3, "429": 1}


def test_rpm_cap_counts_v2_submits_and_reset_clears_the_window(
    start_emulator: EmulatorFactory,
) -> None:
    emulator = start_emulator(rpm=2)
    with emulator_client(emulator.url) as client:
        assert client.post("/v2/p-image-edit", json=BODY).status_code == 200
        assert client.post("/v1/p-image-edit", json=BODY).status_code == 200
        assert client.post("/v2/p-image-edit", json=BODY).status_code == 429

        with emulator_client(emulator.url, key=None) as control:
            assert control.post("/_emulator/reset").status_code == 200
        assert client.post("/v1/p-image-edit", json=BODY).status_code == 200


def test_v2_jobs_wait_for_the_cap_instead_of_failing(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(max_concurrency=2, latency_s=0.2)

    answers = burst(emulator.url, 6, lambda client: client.post("/v2/p-image-edit", json=BODY))

    assert [a.status_code for a in answers] == [200] * 6, "v2 queues instead of answering 429"
    assert {a.json()["status"] for a in answers} == {"QUEUED"}
    final = wait_until(
        lambda: (s := emulator_stats(emulator.url))["jobs"].get("COMPLETED") == 6 and s,
        what="all six jobs completing",
    )
    assert final["jobs"] == {"QUEUED": 6, "COMPLETED": 6}
    assert final["max_in_flight"] == 2
    assert final["billed"] == 6

    with emulator_client(emulator.url) as client:
        for answer in answers:
            result = client.get(answer.json()["response_url"])
            assert result.status_code == 200
            assert result.json()["status"] == "COMPLETED"


# Units ----------------------------------------------------------------------


def test_rate_window_slides() -> None:
    state = EmulatorState(Decimal("1"), None, rpm=2)

    assert state.try_accept_rate(now=1000.0) is None
    assert state.try_accept_rate(now=1010.0) is None
    assert state.try_accept_rate(now=1020.0) == 1060.0, "full: free when 1000 leaves"
    assert state.try_accept_rate(now=1059.9) == 1060.0, "refusals do not fill the window"
    assert state.try_accept_rate(now=1060.0) is None, "1000 has left the window"
    assert state.try_accept_rate(now=1061.0) == 1070.0
    assert state.try_accept_rate(now=1070.0) is None


def test_rate_window_is_cleared_by_reset() -> None:
    state = EmulatorState(Decimal("1"), None, rpm=1)
    assert state.try_accept_rate(now=500.0) is None
    assert state.try_accept_rate(now=501.0) == 560.0
    state.reset()
    assert state.try_accept_rate(now=502.0) is None


def test_no_rate_cap_admits_everything() -> None:
    state = EmulatorState(Decimal("1"), None, rpm=None)
    assert all(state.try_accept_rate(now=1000.0) is None for _ in range(1000))


def test_concurrency_slots() -> None:
    state = EmulatorState(Decimal("1"), max_concurrency=2, rpm=None)
    assert state.try_enter()
    assert state.try_enter()
    assert not state.try_enter()
    state.leave()
    assert state.try_enter()
    snap = state.snapshot()
    assert (snap["in_flight"], snap["max_in_flight"]) == (2, 2)


def test_waiting_for_a_slot_gives_up_when_stopping() -> None:
    state = EmulatorState(Decimal("1"), max_concurrency=1, rpm=None)
    stop = threading.Event()
    assert state.try_enter()
    stop.set()
    assert not state.enter_when_free(stop)
    assert state.snapshot()["in_flight"] == 1


def test_waiting_for_a_slot_gets_it_when_one_is_left() -> None:
    state = EmulatorState(Decimal("1"), max_concurrency=1, rpm=None)
    assert state.try_enter()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(state.enter_when_free(threading.Event())))
    waiter.start()
    state.leave()
    waiter.join(timeout=5)
    assert got == [True]
    assert state.snapshot()["in_flight"] == 1
