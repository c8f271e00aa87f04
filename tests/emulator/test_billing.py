"""Credits and billing: the ledger itself, and what HTTP calls cost."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import httpx
import pytest

from emulator import SegmindEmulator
from emulator.state import EmulatorState
from tests.conftest import EmulatorFactory
from tests.support import burst, emulator_client, emulator_stats, image_uri, wait_until

SMALL = (64, 48)
PRICES = {
    "flux-kontext-pro": Decimal("0.05"),
    "flux-kontext-max": Decimal("0.10"),
    "multi-image-kontext-pro": Decimal("0.05"),
    "multi-image-kontext-max": Decimal("0.10"),
    "p-image-edit": Decimal("0.01"),
}


def dec(value: Any) -> Decimal:
    """A JSON number or header text as an exact decimal."""
    return Decimal(str(value))


def body_for(slug: str) -> dict[str, Any]:
    """A valid, cheap-to-render body for ``slug``."""
    red = image_uri((220, 30, 30), SMALL)
    blue = image_uri((30, 30, 220), SMALL)
    if slug == "p-image-edit":
        return {"prompt": "make it pop", "image_urls": [red], "aspect_ratio": "1:1"}
    if slug.startswith("multi-image"):
        return {
            "prompt": "merge them",
            "input_image_1": red,
            "input_image_2": blue,
            "aspect_ratio": "1:1",
        }
    return {"prompt": "make it pop", "input_image": red, "aspect_ratio": "1:1"}


def client_for(emulator: SegmindEmulator, **kwargs: Any) -> httpx.Client:
    return emulator_client(emulator.url, **kwargs)


def stats(emulator: SegmindEmulator) -> dict[str, Any]:
    return emulator_stats(emulator.url)


def control(emulator: SegmindEmulator, path: str, **kwargs: Any) -> httpx.Response:
    with emulator_client(emulator.url, key=None) as client:
        return client.post(path, **kwargs)


# The ledger, without HTTP ---------------------------------------------------


def test_reserve_counts_holds_against_the_balance() -> None:
    state = EmulatorState(Decimal("0.10"), None, None)
    price = Decimal("0.05")

    assert state.reserve(price)
    assert state.reserve(price)
    assert not state.reserve(price), "two holds of 0.05 use up 0.10"
    assert state.credits_remaining == Decimal("0.10"), "holding is not spending"

    state.release(price)
    assert state.reserve(price), "a released hold frees its amount"


def test_charge_turns_a_hold_into_spending_and_counts_it() -> None:
    state = EmulatorState(Decimal("1"), None, None)
    assert state.reserve(Decimal("0.10"))
    assert state.reserve(Decimal("0.01"))

    assert state.charge("flux-kontext-max", Decimal("0.10")) == Decimal("0.90")
    state.release(Decimal("0.01"))

    snap = state.snapshot()
    assert snap["billed"] == 1
    assert dec(snap["spent_usd"]) == Decimal("0.10")
    assert dec(snap["credits_remaining"]) == Decimal("0.90")
    assert dec(snap["credits_reserved"]) == 0
    assert snap["by_slug"]["flux-kontext-max"]["billed"] == 1
    assert dec(snap["by_slug"]["flux-kontext-max"]["spent_usd"]) == Decimal("0.10")


def test_reset_restores_the_balance_and_can_set_a_new_one() -> None:
    state = EmulatorState(Decimal("0.50"), None, None)
    state.count_request("p-image-edit")
    assert state.reserve(Decimal("0.05"))
    state.charge("flux-kontext-pro", Decimal("0.05"))

    state.reset()
    snap = state.snapshot()
    assert dec(snap["credits_remaining"]) == Decimal("0.50")
    assert (snap["requests"], snap["billed"], snap["by_slug"]) == (0, 0, {})
    assert dec(snap["spent_usd"]) == 0

    state.reset(Decimal("2"))
    assert state.credits_remaining == Decimal("2")
    state.reset()
    assert state.credits_remaining == Decimal("2"), "a new balance becomes the one to restore"


# Billing over HTTP ----------------------------------------------------------


def test_each_slug_is_billed_exactly_its_price(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("1"))
    with client_for(emulator) as client:
        for slug, price in PRICES.items():
            response = client.post(f"/v1/{slug}", json=body_for(slug))
            assert response.status_code == 200, response.text
            assert dec(response.headers["x-cost"]) == price

    snap = stats(emulator)
    assert snap["billed"] == len(PRICES)
    assert dec(snap["spent_usd"]) == Decimal("0.31")
    assert dec(snap["credits_remaining"]) == Decimal("0.69")
    assert dec(snap["credits_reserved"]) == 0
    for slug, price in PRICES.items():
        assert snap["by_slug"][slug]["requests"] == 1
        assert snap["by_slug"][slug]["billed"] == 1
        assert dec(snap["by_slug"][slug]["spent_usd"]) == price


def test_repeated_calls_add_up_exactly(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.3"))
    remaining = []
    with client_for(emulator) as client:
        for _ in range(3):
            response = client.post("/v1/p-image-edit", json=body_for("p-image-edit"))
            assert response.status_code == 200, response.text
            remaining.append(dec(response.headers["x-remaining-credits"]))
        response = client.post("/v1/flux-kontext-max", json=body_for("flux-kontext-max"))
        assert response.status_code == 200, response.text
        remaining.append(dec(response.headers["x-remaining-credits"]))

    assert remaining == [Decimal("0.29"), Decimal("0.28"), Decimal("0.27"), Decimal("0.17")]
    snap = stats(emulator)
    assert dec(snap["by_slug"]["p-image-edit"]["spent_usd"]) == Decimal("0.03")
    assert dec(snap["by_slug"]["flux-kontext-max"]["spent_usd"]) == Decimal("0.10")
    assert dec(snap["spent_usd"]) == Decimal("0.13")
    assert dec(snap["credits_remaining"]) == Decimal("0.17")


def test_refused_calls_are_not_billed(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("1"))
    with client_for(emulator) as client:
        invalid = client.post("/v1/flux-kontext-pro", json={"prompt": "x", "aspect_ratio": "7:3"})
        bad_input = client.post(
            "/v1/p-image-edit",
            json={"prompt": "x", "image_urls": ["data:image/png;base64,aGVsbG8="]},
        )
        unknown = client.post("/v1/no-such-model", json=body_for("p-image-edit"))
        wrong_key = client.post(
            "/v1/p-image-edit", json=body_for("p-image-edit"), headers={"x-api-key": "wrong"}
        )
    with client_for(emulator, key=None) as keyless:
        no_key = keyless.post("/v1/p-image-edit", json=body_for("p-image-edit"))

    assert invalid.status_code == 400
    assert bad_input.status_code == 400
    assert unknown.status_code == 404
    assert wrong_key.status_code == 401
    assert no_key.status_code == 401
    for authenticated in (invalid, bad_input, unknown):
        assert dec(authenticated.headers["x-remaining-credits"]) == Decimal("1")
    for refused in (wrong_key, no_key):
        assert "x-remaining-credits" not in refused.headers

    snap = stats(emulator)
    assert snap["requests"] == 5
    assert snap["billed"] == 0
    assert dec(snap["spent_usd"]) == 0
    assert dec(snap["credits_remaining"]) == Decimal("1")
    assert dec(snap["credits_reserved"]) == 0
    assert snap["by_status"] == {"400": 2, "401": 2, "404": 1}


@pytest.mark.parametrize("fault", ["429", "500", "502", "504"])
def test_injected_error_faults_are_not_billed(start_emulator: EmulatorFactory, fault: str) -> None:
    emulator = start_emulator(credits_usd=Decimal("1"), faults={fault: 1.0})
    with client_for(emulator) as client:
        response = client.post("/v1/flux-kontext-pro", json=body_for("flux-kontext-pro"))

    assert response.status_code == int(fault)
    assert dec(response.headers["x-remaining-credits"]) == Decimal("1")
    snap = stats(emulator)
    assert snap["billed"] == 0
    assert dec(snap["credits_remaining"]) == Decimal("1")
    assert dec(snap["credits_reserved"]) == 0


def test_credits_run_down_to_406(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.12"))
    with client_for(emulator) as client:
        answers = [
            client.post("/v1/flux-kontext-pro", json=body_for("flux-kontext-pro")) for _ in range(3)
        ]

    assert [a.status_code for a in answers] == [200, 200, 406]
    assert [dec(a.headers["x-remaining-credits"]) for a in answers] == [
        Decimal("0.07"),
        Decimal("0.02"),
        Decimal("0.02"),
    ]
    message = answers[2].json()["error"]
    assert "0.02" in message, "the 406 states the credits left"
    assert "0.05" in message, "the 406 states the price"
    assert "flux-kontext-pro" in message

    snap = stats(emulator)
    assert snap["billed"] == 2
    assert dec(snap["spent_usd"]) == Decimal("0.10")
    assert dec(snap["credits_remaining"]) == Decimal("0.02")
    assert snap["by_status"] == {"200": 2, "406": 1}

    # What is left still buys a cheaper generation.
    with client_for(emulator) as client:
        cheap = client.post("/v1/p-image-edit", json=body_for("p-image-edit"))
    assert cheap.status_code == 200
    assert dec(cheap.headers["x-remaining-credits"]) == Decimal("0.01")


def test_concurrent_calls_never_spend_more_than_the_balance(
    start_emulator: EmulatorFactory,
) -> None:
    affordable = 4
    attempts = 3 * affordable
    emulator = start_emulator(credits_usd=Decimal("0.20"), latency_s=0.4)
    done = threading.Event()
    snapshots: list[dict[str, Any]] = []

    def watch() -> None:
        with client_for(emulator, key=None) as watcher:
            while not done.is_set():
                snapshots.append(watcher.get("/_emulator/stats").json())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = burst(
            emulator.url,
            attempts,
            lambda client: client.post("/v1/flux-kontext-pro", json=body_for("flux-kontext-pro")),
        )
    finally:
        done.set()
        watcher.join()

    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * affordable + [406] * (attempts - affordable)
    snap = stats(emulator)
    assert snap["billed"] == affordable
    assert dec(snap["spent_usd"]) == Decimal("0.20")
    assert dec(snap["credits_remaining"]) == 0
    assert dec(snap["credits_reserved"]) == 0
    assert snap["max_in_flight"] > 1, "the calls overlapped"

    snapshots.append(snap)
    for seen in snapshots:
        assert dec(seen["credits_remaining"]) >= 0
        assert dec(seen["credits_remaining"]) - dec(seen["credits_reserved"]) >= 0


def test_concurrent_v2_submits_hold_credits_per_job(start_emulator: EmulatorFactory) -> None:
    affordable = 3
    attempts = 3 * affordable
    emulator = start_emulator(credits_usd=Decimal("0.03"), latency_s=0.2)
    answers = burst(
        emulator.url,
        attempts,
        lambda client: client.post("/v2/p-image-edit", json=body_for("p-image-edit")),
    )

    accepted = [a for a in answers if a.status_code == 200]
    assert len(accepted) == affordable
    assert sorted(a.status_code for a in answers if a.status_code != 200) == [406] * (
        attempts - affordable
    )

    wait_until(
        lambda: stats(emulator)["jobs"].get("COMPLETED") == affordable,
        what="every accepted job completing",
    )
    snap = stats(emulator)
    assert snap["billed"] == affordable
    assert dec(snap["credits_remaining"]) == 0
    assert dec(snap["credits_reserved"]) == 0


def test_reset_restores_credits_and_clears_counters(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.5"))
    with client_for(emulator) as client:
        assert client.post("/v1/flux-kontext-max", json=body_for("flux-kontext-max")).is_success
        assert client.post("/v1/no-such-model", json={}).status_code == 404
    before = stats(emulator)
    assert before["billed"] == 1
    assert dec(before["credits_remaining"]) == Decimal("0.40")

    reset = control(emulator, "/_emulator/reset")
    assert reset.status_code == 200
    for snap in (reset.json(), stats(emulator)):
        assert dec(snap["credits_remaining"]) == Decimal("0.5")
        assert snap["requests"] == 0
        assert snap["billed"] == 0
        assert dec(snap["spent_usd"]) == 0
        assert snap["by_slug"] == {}
        assert snap["by_status"] == {}


def test_reset_with_a_new_balance(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.05"))
    with client_for(emulator) as client:
        assert client.post("/v1/flux-kontext-pro", json=body_for("flux-kontext-pro")).is_success
        assert client.post("/v1/p-image-edit", json=body_for("p-image-edit")).status_code == 406

        reset = control(emulator, "/_emulator/reset", json={"credits_usd": 1})
        assert reset.status_code == 200
        assert dec(reset.json()["credits_remaining"]) == Decimal("1")

        response = client.post("/v1/flux-kontext-max", json=body_for("flux-kontext-max"))
        assert response.status_code == 200
        assert dec(response.headers["x-remaining-credits"]) == Decimal("0.90")

    # A plain reset afterwards goes back to the new balance, not the starting one.
    again = control(emulator, "/_emulator/reset")
    assert dec(again.json()["credits_remaining"]) == Decimal("1")


@pytest.mark.parametrize(
    "body",
    [b'{"credits_usd": -1}', b'{"credits_usd": "lots"}', b"not json"],
    ids=["negative", "not-a-number", "not-json"],
)
def test_reset_rejects_a_bad_balance(emulator: SegmindEmulator, body: bytes) -> None:
    response = control(emulator, "/_emulator/reset", content=body)
    assert response.status_code == 400
    assert "credits_usd" in response.json()["error"]
    assert dec(stats(emulator)["credits_remaining"]) == Decimal("100"), "the balance is unchanged"
