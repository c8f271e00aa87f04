"""The HTTP surface around the generation routes, and starting and stopping in-process."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from emulator import SegmindEmulator
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, image_uri, wait_until

BODY = {"prompt": "x", "image_urls": [image_uri(size=(64, 48))]}


def test_missing_key_is_401_without_credit_header(api: httpx.Client) -> None:
    response = api.post("/v1/p-image-edit", json=BODY, headers={"x-api-key": ""})
    del api.headers["x-api-key"]
    missing = api.post("/v1/p-image-edit", json=BODY)

    assert response.status_code == 401
    assert missing.status_code == 401
    assert missing.json() == {"error": "Missing Authorization or x-api-key in header"}
    assert "x-remaining-credits" not in missing.headers


def test_bearer_token_is_refused_with_a_hint(emulator: SegmindEmulator) -> None:
    response = httpx.post(
        f"{emulator.url}/v1/p-image-edit",
        json=BODY,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )

    assert response.status_code == 401
    assert "x-api-key" in response.json()["error"]


def test_every_authenticated_answer_carries_remaining_credits(api: httpx.Client) -> None:
    ok = api.post("/v1/p-image-edit", json=BODY)
    bad = api.post("/v1/p-image-edit", json={"prompt": "x"})
    unknown = api.post("/v1/no-such-model", json=BODY)

    assert [r.status_code for r in (ok, bad, unknown)] == [200, 400, 404]
    assert [r.headers["x-remaining-credits"] for r in (ok, bad, unknown)] == ["99.99"] * 3


def test_wrong_method_is_an_html_405(api: httpx.Client) -> None:
    response = api.get("/v1/p-image-edit")

    assert response.status_code == 405
    assert response.headers["content-type"] == "text/html"
    assert response.headers["allow"] == "POST"


def test_unknown_path_is_a_json_404(api: httpx.Client) -> None:
    response = api.get("/v3/whatever")

    assert response.status_code == 404
    assert "error" in response.json()


def test_keep_alive_connection_serves_many_requests(api: httpx.Client) -> None:
    seen_ports = set()
    for _ in range(5):
        response = api.post("/v1/p-image-edit", json=BODY, extensions={})
        assert response.status_code == 200
        stream = response.extensions["network_stream"]
        seen_ports.add(stream.get_extra_info("client_addr")[1])

    assert len(seen_ports) == 1


def test_two_emulators_are_independent(start_emulator: EmulatorFactory) -> None:
    first = start_emulator(credits_usd=1)
    second = start_emulator(credits_usd=2)

    httpx.post(f"{first.url}/v1/p-image-edit", json=BODY, headers={"x-api-key": API_KEY})

    assert first.url != second.url
    assert first.stats()["billed"] == 1
    assert second.stats()["billed"] == 0


def test_stop_is_prompt_with_a_held_connection_and_frees_the_port() -> None:
    emulator = SegmindEmulator(api_key=API_KEY, faults={"timeout": 1.0}, timeout_hold_s=600)
    emulator.start()
    port = int(emulator.url.rsplit(":", 1)[1])
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(
                f"{emulator.url}/v1/p-image-edit",
                json=BODY,
                headers={"x-api-key": API_KEY},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(
        lambda: emulator.stats()["by_status"].get("timeout", 0), what="the timeout fault starting"
    )

    started = time.monotonic()
    emulator.stop()
    stop_seconds = time.monotonic() - started
    caller.join(timeout=10)

    assert not caller.is_alive()
    assert outcome
    assert isinstance(outcome[0], httpx.RemoteProtocolError | httpx.ReadError)
    # The hold is 600 s: stopping must not wait it out.
    assert stop_seconds < 5, f"stop took {stop_seconds:.1f}s with a held connection"
    with SegmindEmulator(api_key=API_KEY, port=port) as again:
        assert again.url.endswith(f":{port}")


def test_stop_twice_and_url_after_stop() -> None:
    emulator = SegmindEmulator(api_key=API_KEY).start()
    emulator.stop()
    emulator.stop()

    with pytest.raises(RuntimeError, match="not running"):
        _ = emulator.url


def test_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty API key"):
        SegmindEmulator(api_key="")


def test_api_key_never_appears_in_config_repr() -> None:
    emulator = SegmindEmulator(api_key="super-secret-value")

    assert "super-secret-value" not in repr(emulator.config)
    assert "super-secret-value" not in str(emulator.config)


def test_unread_body_of_a_refused_request_does_not_poison_the_connection(
    api: httpx.Client,
) -> None:
    """A 404 for an unknown path still consumes the body, so the next request parses."""
    refused = api.post("/v3/p-image-edit", json=BODY)
    follow_up = api.post("/v1/p-image-edit", json=BODY)

    assert refused.status_code == 404
    assert follow_up.status_code == 200
