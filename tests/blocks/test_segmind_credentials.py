"""The SegmindCredentials block: fallbacks, labels, the client it builds, secrecy, registration."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from blocks import SegmindCredentials
from emulator import SegmindEmulator
from segmind_core.client import DEFAULT_BASE_URL, SegmindClient
from segmind_core.errors import AuthenticationError
from tests.conftest import EmulatorFactory
from tests.support import API_KEY, decode, emulator_stats, image_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
# Recognisable, so that any place it leaks to can be found by a plain substring search.
SECRET_KEY = "SG_feedc0ffee1234_SECRET"  # noqa: S105 - fake, recognisable on purpose
P_IMAGE_EDIT_BODY = {
    "prompt": "make it blue",
    "image_urls": [image_uri((30, 30, 200), (64, 48))],
    "seed": 5,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SEGMIND_* variables: each test sets exactly the ones it needs."""
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    monkeypatch.delenv("SEGMIND_BASE_URL", raising=False)
    return monkeypatch


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# Fallbacks -------------------------------------------------------------------


def test_key_and_base_url_fall_back_to_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SEGMIND_API_KEY", "key-from-env")
    clean_env.setenv("SEGMIND_BASE_URL", "http://127.0.0.1:9")

    credentials = SegmindCredentials()

    assert credentials.resolved_api_key().get_secret_value() == "key-from-env"
    assert credentials.resolved_base_url() == "http://127.0.0.1:9"


def test_base_url_defaults_to_segmind_without_environment(clean_env: pytest.MonkeyPatch) -> None:
    assert SegmindCredentials().resolved_base_url() == DEFAULT_BASE_URL == "https://api.segmind.com"


def test_empty_key_field_falls_back_to_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SEGMIND_API_KEY", "key-from-env")

    credentials = SegmindCredentials(api_key=SecretStr(""))

    assert credentials.resolved_api_key().get_secret_value() == "key-from-env"
    assert credentials.label() == "environment variable SEGMIND_API_KEY"


def test_explicit_fields_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SEGMIND_API_KEY", "key-from-env")
    clean_env.setenv("SEGMIND_BASE_URL", "http://127.0.0.1:9")

    credentials = SegmindCredentials(api_key="key-from-block", base_url="http://127.0.0.1:10")

    assert credentials.resolved_api_key().get_secret_value() == "key-from-block"
    assert credentials.resolved_base_url() == "http://127.0.0.1:10"
    assert credentials.label() == "the SegmindCredentials given"
    with credentials.get_client() as client:
        assert client.base_url == "http://127.0.0.1:10"


def test_the_environment_key_goes_only_to_the_environment_server(
    clean_env: pytest.MonkeyPatch, start_emulator: EmulatorFactory
) -> None:
    # A block that names another server (it may come inline with a run's
    # parameters) does not get the worker's key.
    clean_env.setenv("SEGMIND_API_KEY", API_KEY)
    elsewhere = start_emulator()
    credentials = SegmindCredentials(base_url=f"{elsewhere.url}/?token=abc")

    with pytest.raises(AuthenticationError) as caught:
        credentials.get_client()

    message = str(caught.value)
    assert message.startswith(f"the credentials name the server {elsewhere.url}/?... but carry")
    assert "is sent only to https://api.segmind.com (SEGMIND_BASE_URL" in message
    assert API_KEY not in message
    assert "token=abc" not in message
    assert emulator_stats(elsewhere.url)["requests"] == 0


@pytest.mark.parametrize(
    ("block_url", "env_url"),
    [
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
        ("http://127.0.0.1:9/", "HTTP://127.0.0.1:9"),
        ("https://api.segmind.com/", None),
    ],
)
def test_a_block_naming_the_environment_server_takes_the_environment_key(
    clean_env: pytest.MonkeyPatch, block_url: str, env_url: str | None
) -> None:
    clean_env.setenv("SEGMIND_API_KEY", "key-from-env")
    if env_url is not None:
        clean_env.setenv("SEGMIND_BASE_URL", env_url)

    credentials = SegmindCredentials(base_url=block_url)

    assert credentials.resolved_api_key().get_secret_value() == "key-from-env"


def test_a_block_with_its_own_key_may_name_any_server(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SEGMIND_API_KEY", "key-from-env")

    credentials = SegmindCredentials(api_key="key-from-block", base_url="http://127.0.0.1:10")

    assert credentials.resolved_api_key().get_secret_value() == "key-from-block"


def test_no_key_anywhere_fails_clearly_before_any_request(
    clean_env: pytest.MonkeyPatch, emulator: SegmindEmulator
) -> None:
    assert "SEGMIND_API_KEY" not in os.environ
    credentials = SegmindCredentials(base_url=emulator.url)

    with pytest.raises(AuthenticationError) as caught:
        credentials.get_client()

    message = str(caught.value)
    assert "no Segmind API key" in message
    assert "SEGMIND_API_KEY" in message
    assert "SegmindCredentials block" in message
    assert emulator_stats(emulator.url)["requests"] == 0
    with pytest.raises(AuthenticationError, match="SEGMIND_API_KEY"):
        credentials.resolved_api_key()


# Labels ----------------------------------------------------------------------


def test_label_names_the_environment_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SEGMIND_API_KEY", "key-from-env")

    assert SegmindCredentials().label() == "environment variable SEGMIND_API_KEY"


@pytest.mark.usefixtures("prefect_harness")
def test_label_names_the_saved_block(clean_env: pytest.MonkeyPatch) -> None:
    SegmindCredentials(api_key="key-from-block").save("segmind-prod", overwrite=True)

    loaded = SegmindCredentials.load("segmind-prod")

    assert loaded.label() == "block 'segmind-prod'"
    with loaded.get_client() as client:
        assert client.credentials_label == "block 'segmind-prod'"
        assert "segmind-prod" in repr(client)


# The client ----------------------------------------------------------------


def test_get_client_follows_the_fields(clean_env: pytest.MonkeyPatch) -> None:
    credentials = SegmindCredentials(
        api_key="key-from-block",
        base_url="http://127.0.0.1:10/",
        connect_timeout_s=1.5,
        read_timeout_s=42.0,
        max_attempts=3,
        max_retry_time_s=12.0,
        backoff_initial_s=0.25,
        backoff_max_s=2.0,
    )

    with credentials.get_client() as client:
        assert isinstance(client, SegmindClient)
        assert client.base_url == "http://127.0.0.1:10"
        assert client.retry.max_attempts == 3
        assert client.retry.max_elapsed_s == 12.0
        assert client.retry.backoff_initial_s == 0.25
        assert client.retry.backoff_max_s == 2.0
        assert client.read_timeout_s == 42.0
        timeout = client._http.timeout
        assert timeout.connect == 1.5
        assert timeout.read == 42.0
        assert client.credentials_label == "the SegmindCredentials given"


def test_get_client_overrides_take_precedence(clean_env: pytest.MonkeyPatch) -> None:
    credentials = SegmindCredentials(api_key="key-from-block", base_url="http://127.0.0.1:10")

    with credentials.get_client(credentials_label="my label", read_timeout_s=3.0) as client:
        assert client.credentials_label == "my label"
        assert client.read_timeout_s == 3.0


def test_get_client_generates_against_the_emulator(
    clean_env: pytest.MonkeyPatch, emulator: SegmindEmulator
) -> None:
    credentials = SegmindCredentials(api_key=API_KEY, base_url=emulator.url)

    with credentials.get_client() as client:
        result = client.generate("p-image-edit", P_IMAGE_EDIT_BODY)

    assert result.slug == "p-image-edit"
    assert result.seed == 5
    assert (result.width, result.height) == (1184, 880)
    assert decode(result.image).size == (1184, 880)
    stats = emulator_stats(emulator.url)
    assert stats["requests"] == 1
    assert stats["billed"] == 1


def test_environment_credentials_reach_the_emulator(
    clean_env: pytest.MonkeyPatch, emulator: SegmindEmulator
) -> None:
    clean_env.setenv("SEGMIND_API_KEY", API_KEY)
    clean_env.setenv("SEGMIND_BASE_URL", emulator.url)

    with SegmindCredentials().get_client() as client:
        result = client.generate("p-image-edit", P_IMAGE_EDIT_BODY)

    assert result.seed == 5
    assert emulator_stats(emulator.url)["billed"] == 1


# Secrecy -------------------------------------------------------------------


def test_key_is_a_secret_str_hidden_from_repr_str_and_json(clean_env: pytest.MonkeyPatch) -> None:
    credentials = SegmindCredentials(api_key=SECRET_KEY, base_url="http://127.0.0.1:10")

    assert isinstance(credentials.api_key, SecretStr)
    assert credentials.api_key.get_secret_value() == SECRET_KEY
    for text in (
        repr(credentials),
        str(credentials),
        credentials.model_dump_json(),
        str(credentials.model_dump()),
        repr(credentials.get_client()),
    ):
        assert "feedc0ffee" not in text
        assert SECRET_KEY not in text


@pytest.mark.usefixtures("prefect_harness")
def test_key_round_trips_through_save_and_load_as_a_secret(
    clean_env: pytest.MonkeyPatch,
) -> None:
    name = unique_name("segmind-secret")
    SegmindCredentials(api_key=SECRET_KEY, base_url="http://127.0.0.1:10").save(name)

    loaded = SegmindCredentials.load(name)

    assert isinstance(loaded.api_key, SecretStr)
    assert loaded.api_key.get_secret_value() == SECRET_KEY
    assert loaded.base_url == "http://127.0.0.1:10"
    assert SECRET_KEY not in repr(loaded)
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            name, block_type_slug="segmind-credentials", include_secrets=False
        )
        schema = client.read_block_type_by_slug("segmind-credentials")
    # Read without secrets, the server masks the key: Prefect stores it as a secret.
    assert SECRET_KEY not in str(document.data)
    assert document.data["base_url"] == "http://127.0.0.1:10"
    assert document.block_schema is not None
    assert "api_key" in document.block_schema.fields.get("secret_fields", [])
    assert schema.slug == "segmind-credentials"


@pytest.mark.usefixtures("prefect_harness")
def test_block_register_command_registers_the_block_type() -> None:
    import prefect.settings

    api_url = prefect.settings.PREFECT_API_URL.value()
    assert api_url
    assert api_url.startswith("http://127.0.0.1:")
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )

    # Saving blocks in other tests registers the type too: start from a server without it.
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_block_type_by_slug("segmind-credentials")
        except ObjectNotFound:
            pass
        else:
            client.delete_block_type(existing.id)
        with pytest.raises(ObjectNotFound):
            client.read_block_type_by_slug("segmind-credentials")

    completed = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Segmind Credentials" in completed.stdout
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("segmind-credentials")
    assert block_type.name == "Segmind Credentials"
    assert str(block_type.documentation_url) == (
        "https://docs.segmind.com/docs/get-started/authentication"
    )
    assert block_type.logo_url is None


def test_block_fields_default_to_the_retry_policy(clean_env: pytest.MonkeyPatch) -> None:
    credentials = SegmindCredentials(api_key="k")

    assert credentials.max_attempts == 6
    assert credentials.max_retry_time_s == 600.0
    assert credentials.backoff_initial_s == 1.0
    assert credentials.backoff_max_s == 30.0
    assert credentials.connect_timeout_s == 10.0
    assert credentials.read_timeout_s == 180.0


def test_wrong_key_is_rejected_without_retry(start_emulator: EmulatorFactory) -> None:
    emulator = start_emulator(credits_usd=1)
    credentials = SegmindCredentials(api_key="wrong-key", base_url=emulator.url)

    with credentials.get_client() as client, pytest.raises(AuthenticationError, match="401"):
        client.generate("p-image-edit", P_IMAGE_EDIT_BODY)
    assert emulator_stats(emulator.url)["requests"] == 1
