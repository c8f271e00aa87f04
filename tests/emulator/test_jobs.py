"""The v2 queue over HTTP: submit, poll, fetch the result and the output image."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from emulator import SegmindEmulator
from tests.conftest import EmulatorFactory
from tests.support import decode, emulator_client, emulator_stats, image_uri, wait_until

FINAL = {"COMPLETED", "FAILED"}


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def flux_body(**extra: Any) -> dict[str, Any]:
    return {
        "prompt": "make it pop",
        "input_image": image_uri((220, 30, 30), (64, 48)),
        "aspect_ratio": "16:9",
        **extra,
    }


def submit(emulator: SegmindEmulator, slug: str, body: dict[str, Any]) -> httpx.Response:
    with emulator_client(emulator.url) as client:
        return client.post(f"/v2/{slug}", json=body)


def poll(client: httpx.Client, status_url: str) -> tuple[httpx.Response, list[str]]:
    """Poll ``status_url`` until the job is final; returns the last answer and every status."""
    seen: list[str] = []

    def final() -> httpx.Response | None:
        response = client.get(status_url)
        seen.append(response.json()["status"])
        return response if seen[-1] in FINAL else None

    last = wait_until(final, timeout=10.0, interval=0.02, what="the job finishing")
    return last, seen


def test_lifecycle_from_submit_to_output(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(latency_s=0.3)

    submitted = submit(emulator, "flux-kontext-pro", flux_body(seed=1234))

    assert submitted.status_code == 200
    ticket = submitted.json()
    request_id = ticket["request_id"]
    assert ticket["status"] == "QUEUED"
    assert ticket["status_url"] == f"{emulator.url}/v2/requests/{request_id}/status"
    assert ticket["response_url"] == f"{emulator.url}/v2/requests/{request_id}"
    assert dec(emulator_stats(emulator.url)["credits_reserved"]) == Decimal("0.05")

    with emulator_client(emulator.url) as client:
        pending = client.get(ticket["response_url"])
        assert pending.status_code == 200
        assert pending.json()["status"] in {"QUEUED", "PROCESSING"}
        assert "output" not in pending.json()

        status, seen = poll(client, ticket["status_url"])
        assert status.status_code == 200
        assert status.json()["status"] == "COMPLETED"
        assert "PROCESSING" in seen, seen
        assert seen.index("PROCESSING") < seen.index("COMPLETED")

        result = client.get(ticket["response_url"])

    assert result.status_code == 200
    body = result.json()
    assert body["status"] == "COMPLETED"
    assert body["output"] == f"{emulator.url}/outputs/{request_id}.png"
    metrics = body["metrics"]
    assert dec(metrics["cost"]) == Decimal("0.05")
    assert dec(metrics["remaining_credits"]) == Decimal("99.95")
    assert metrics["seed"] == 1234
    assert metrics["inference_time"] >= 0.29

    output = httpx.get(body["output"], timeout=10.0)  # no key: the URL is public
    assert output.status_code == 200
    assert output.headers["content-type"] == "image/png"
    image = decode(output.content)
    assert image.format == "PNG"
    assert image.size == (1392, 752)

    # The job counter moves just after the status does.
    snap = wait_until(
        lambda: (s := emulator_stats(emulator.url))["jobs"].get("COMPLETED") and s,
        what="the job being counted",
    )
    assert snap["jobs"] == {"QUEUED": 1, "COMPLETED": 1}
    assert snap["billed"] == 1
    assert dec(snap["credits_reserved"]) == 0
    assert dec(snap["credits_remaining"]) == Decimal("99.95")


def test_jpg_output_and_a_drawn_seed(emulator: SegmindEmulator) -> None:
    body = {
        "prompt": "merge them",
        "input_image_1": image_uri((220, 30, 30), (64, 48)),
        "input_image_2": image_uri((30, 30, 220), (64, 48)),
    }
    ticket = submit(emulator, "multi-image-kontext-max", body).json()
    with emulator_client(emulator.url) as client:
        poll(client, ticket["status_url"])
        result = client.get(ticket["response_url"]).json()

    assert result["output"].endswith(".jpg")
    assert dec(result["metrics"]["cost"]) == Decimal("0.10")
    assert result["metrics"]["seed"] == 42, "multi-image-kontext-max's documented default"
    output = httpx.get(result["output"], timeout=10.0)
    assert output.headers["content-type"] == "image/jpeg"
    image = decode(output.content)
    assert image.format == "JPEG"
    assert image.size == (1392, 752)


def test_invalid_body_is_accepted_then_fails(emulator: SegmindEmulator) -> None:
    submitted = submit(emulator, "flux-kontext-pro", flux_body(aspect_ratio="7:3"))

    assert submitted.status_code == 200
    ticket = submitted.json()
    assert ticket["status"] == "QUEUED"
    with emulator_client(emulator.url) as client:
        status, _ = poll(client, ticket["status_url"])
        result = client.get(ticket["response_url"])

    for answer in (status, result):
        assert answer.status_code == 422
        body = answer.json()
        assert body["status"] == "FAILED"
        assert "aspect_ratio" in body["error"]
        assert "7:3" in body["error"]
        assert "output" not in body

    snap = wait_until(
        lambda: (s := emulator_stats(emulator.url))["jobs"].get("FAILED") and s,
        what="the job being counted",
    )
    assert snap["jobs"] == {"QUEUED": 1, "FAILED": 1}
    assert snap["billed"] == 0
    assert dec(snap["credits_reserved"]) == 0, "the hold is released"
    assert dec(snap["credits_remaining"]) == 100


def test_unusable_input_fails_the_job(emulator: SegmindEmulator) -> None:
    body = flux_body(input_image="data:image/png;base64,aGVsbG8=")  # "hello", not an image
    ticket = submit(emulator, "flux-kontext-pro", body).json()
    with emulator_client(emulator.url) as client:
        status, _ = poll(client, ticket["status_url"])

    assert status.status_code == 422
    assert status.json()["error"].startswith("input_image:")
    assert emulator_stats(emulator.url)["billed"] == 0


def test_unknown_request_id_is_404(api: httpx.Client) -> None:
    for path in ("/v2/requests/no-such-id/status", "/v2/requests/no-such-id"):
        response = api.get(path)
        assert response.status_code == 404
        assert "no-such-id" in response.json()["error"]
    assert api.get("/outputs/no-such-id.png").status_code == 404


def test_status_needs_the_key(emulator: SegmindEmulator) -> None:
    ticket = submit(emulator, "flux-kontext-pro", flux_body()).json()

    for key in (None, "wrong-key"):
        with emulator_client(emulator.url, key=key) as client:
            for url in (ticket["status_url"], ticket["response_url"]):
                response = client.get(url)
                assert response.status_code == 401
                assert "x-remaining-credits" not in response.headers


def test_output_url_matches_its_format_only(emulator: SegmindEmulator) -> None:
    ticket = submit(emulator, "flux-kontext-pro", flux_body()).json()
    with emulator_client(emulator.url) as client:
        poll(client, ticket["status_url"])
        output = client.get(ticket["response_url"]).json()["output"]
    assert httpx.get(output, timeout=10.0).status_code == 200
    assert httpx.get(output.replace(".png", ".jpg"), timeout=10.0).status_code == 404


def test_results_expire_after_their_ttl(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(result_ttl_s=0.2)
    ticket = submit(emulator, "flux-kontext-pro", flux_body()).json()
    with emulator_client(emulator.url) as client:
        status, _ = poll(client, ticket["status_url"])
        assert status.json()["status"] == "COMPLETED"
        output = client.get(ticket["response_url"]).json()["output"]

        wait_until(
            lambda: client.get(ticket["status_url"]).status_code == 404,
            timeout=5.0,
            what="the result expiring",
        )
        assert client.get(ticket["response_url"]).status_code == 404
        assert client.get(output).status_code == 404
    assert emulator_stats(emulator.url)["billed"] == 1, "expiry does not undo the charge"


def test_reset_forgets_finished_jobs(emulator: SegmindEmulator) -> None:
    ticket = submit(emulator, "flux-kontext-pro", flux_body()).json()
    with emulator_client(emulator.url) as client:
        poll(client, ticket["status_url"])
        assert client.post("/_emulator/reset").status_code == 200
        assert client.get(ticket["status_url"]).status_code == 404


def test_submit_answers_406_without_credits(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.04"))

    response = submit(emulator, "flux-kontext-pro", flux_body())

    assert response.status_code == 406
    assert "0.04" in response.json()["error"]
    assert "0.05" in response.json()["error"]
    assert dec(response.headers["x-remaining-credits"]) == Decimal("0.04")
    snap = emulator_stats(emulator.url)
    assert snap["jobs"] == {}, "no job was queued"
    assert dec(snap["credits_reserved"]) == 0


def test_queued_jobs_hold_their_credits(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=Decimal("0.10"), latency_s=0.3)

    answers = [submit(emulator, "flux-kontext-pro", flux_body()) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 406]
    with emulator_client(emulator.url) as client:
        for answer in answers[:2]:
            status, _ = poll(client, answer.json()["status_url"])
            assert status.json()["status"] == "COMPLETED"
    snap = emulator_stats(emulator.url)
    assert snap["billed"] == 2
    assert dec(snap["credits_remaining"]) == 0


def test_submit_refuses_what_cannot_become_a_job(api: httpx.Client) -> None:
    unknown = api.post("/v2/no-such-model", json=flux_body())
    not_json = api.post(
        "/v2/flux-kontext-pro", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert unknown.status_code == 404
    assert not_json.status_code == 400
    assert api.get("/_emulator/stats").json()["jobs"] == {}
