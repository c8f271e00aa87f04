"""A rate limit of its own caps calls per minute; the in-flight limit never decays."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from prefect import flow, get_client

from blocks import ObjectStorage, SegmindCredentials
from flows.batch import batch
from tasks import edit_images_with_p_image_edit
from tasks.concurrency import (
    ensure_concurrency_limit,
    ensure_rate_limit,
    rate_tokens,
    require_concurrency_limit,
    segmind_call_slot,
    shared_slots,
)
from tasks.rate_tokens import RateLimitError, RateTokens
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, image_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_every_attempt_takes_a_token_and_back_to_back_calls_wait_for_the_next(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator()
    name = f"rate-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        said = ensure_rate_limit(client, 240, name=name)  # a token every 0.25 s
        limit = client.read_global_concurrency_limit_by_name(name)
    assert said == f"rate limit {name}: created with 240 a minute"
    assert (limit.limit, limit.slot_decay_per_second) == (1, pytest.approx(4.0))
    credentials = SegmindCredentials(
        api_key=API_KEY, base_url=emulator.url, concurrency_limit=None, rate_limit=name
    )
    storage = ObjectStorage(base_url=str(tmp_path))
    tokens = rate_tokens(name)

    @flow
    def three_in_a_row() -> None:
        for seed in (640_001, 640_002, 640_003):
            edit_images_with_p_image_edit(
                "rate",
                [image_bytes(size=(64, 48))],
                seed=seed,
                credentials=credentials,
                storage=storage,
            )

    three_in_a_row()

    assert emulator.stats()["billed"] == 3
    assert tokens.taken == 3
    # One token, renewed every 0.25 s: the calls after the first found it taken and waited.
    assert tokens.refused >= 1


def test_a_missing_rate_limit_fails_the_batch_before_anything_is_paid(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = start_emulator()
    credentials = SegmindCredentials(
        api_key=API_KEY, base_url=emulator.url, concurrency_limit=None, rate_limit="no-such-rate"
    )
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "endpoint": "p-image-edit", "prompt": "x", "params": {}}\n')

    state = batch(
        manifest=str(manifest),
        storage=ObjectStorage(base_url=str(tmp_path / "out")),
        credentials=credentials,
        return_state=True,
    )

    assert state.is_failed()
    assert "no-such-rate" in (state.message or "")
    assert "--rate-per-minute" in (state.message or "")
    assert emulator.stats()["requests"] == 0


def test_a_limit_whose_slots_do_not_decay_is_not_a_rate_limit() -> None:
    name = f"not-a-rate-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        ensure_concurrency_limit(client, 3, name=name)

    with pytest.raises(RateLimitError, match=rf"{name}.*not a rate limit"):
        RateTokens(name).take()
    with pytest.raises(RateLimitError, match=rf"{name}.*slots decay"):
        require_concurrency_limit(None, name)


def test_a_missing_rate_limit_says_how_to_create_it() -> None:
    with pytest.raises(RateLimitError, match=r"no rate limit 'absent-rate'.*--rate-per-minute"):
        RateTokens("absent-rate").take()


def test_the_token_is_taken_while_the_slot_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens taken before the slot would pile up and start their calls together."""
    rate, inflight = f"rate-{uuid4().hex[:8]}", f"slots-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        ensure_rate_limit(client, 6000, name=rate)
        ensure_concurrency_limit(client, 1, name=inflight)
    tokens, slots = rate_tokens(rate), shared_slots(inflight)
    held_when_taken: list[int] = []
    take = tokens.take

    def recording_take() -> None:
        held_when_taken.append(slots.held)
        take()

    monkeypatch.setattr(tokens, "take", recording_take)

    with segmind_call_slot(inflight, rate)(), get_client(sync_client=True) as client:
        held = client.read_global_concurrency_limit_by_name(inflight).active_slots
    with get_client(sync_client=True) as client:
        after = client.read_global_concurrency_limit_by_name(inflight).active_slots

    assert held_when_taken == [1]
    assert tokens.taken == 1
    assert (held, after) == (1, 0)


def test_the_rate_limit_comes_from_the_block_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEGMIND_RATE_LIMIT", raising=False)
    assert SegmindCredentials().resolved_rate_limit() is None
    monkeypatch.setenv("SEGMIND_RATE_LIMIT", " segmind-rate ")
    assert SegmindCredentials().resolved_rate_limit() == "segmind-rate"
    assert SegmindCredentials(rate_limit="mine").resolved_rate_limit() == "mine"
    monkeypatch.setenv("SEGMIND_RATE_LIMIT", "")
    assert SegmindCredentials().resolved_rate_limit() is None


def test_the_in_flight_limit_loses_any_decay_an_older_setup_gave_it() -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    name = f"old-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        ensure_concurrency_limit(client, 4, name=name)
        client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(slot_decay_per_second=0.5)
        )
        said = ensure_concurrency_limit(client, 4, name=name)
        limit = client.read_global_concurrency_limit_by_name(name)

    assert said == f"concurrency limit {name}: set to 4 slots"
    assert limit.slot_decay_per_second == 0
