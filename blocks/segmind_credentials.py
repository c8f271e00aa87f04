"""The Segmind credentials block: the API key as a secret, plus connection settings."""

from __future__ import annotations

import os
from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import ConfigDict, Field, SecretStr

from blocks.reference_schema import referenceable_block_schema
from segmind_core.client import (
    DEFAULT_BASE_URL,
    LoggerLike,
    RetryPolicy,
    SegmindClient,
    checked_api_key,
)
from segmind_core.errors import AuthenticationError
from segmind_core.fetch import display_url

__all__ = [
    "BASE_URL_ENV",
    "CONCURRENCY_LIMIT_ENV",
    "DEFAULT_CONCURRENCY_LIMIT",
    "QUEUE_ENV",
    "RATE_LIMIT_ENV",
    "SegmindCredentials",
]

CONCURRENCY_LIMIT_ENV = "SEGMIND_CONCURRENCY_LIMIT"
QUEUE_ENV = "SEGMIND_QUEUE"
RATE_LIMIT_ENV = "SEGMIND_RATE_LIMIT"
DEFAULT_CONCURRENCY_LIMIT = "segmind"

API_KEY_ENV = "SEGMIND_API_KEY"
BASE_URL_ENV = "SEGMIND_BASE_URL"


class SegmindCredentials(CredentialsBlock):
    """Credentials and connection settings for Segmind's API.

    The key is a secret: Prefect stores it encrypted and never shows it. Any
    field left empty falls back to the environment: ``SEGMIND_API_KEY`` for the
    key, ``SEGMIND_BASE_URL`` for the server root (default
    ``https://api.segmind.com``; the client adds ``/v1/...``). A value saved in
    the block always wins over the environment; ``python -m deployments.setup``
    always saves the server, so no worker's environment can send the key elsewhere.

    Example:
        Load saved credentials and call an endpoint:
        ```python
        from blocks import SegmindCredentials

        credentials = SegmindCredentials.load("BLOCK_NAME")
        with credentials.get_client() as client:
            result = client.generate("p-image-edit", {"prompt": "...", "image_urls": ["https://..."]})
        ```
    """

    # A saved block can be chosen in a run form: see blocks/reference_schema.py.
    model_config = ConfigDict(json_schema_extra=referenceable_block_schema)
    _block_type_name = "Segmind Credentials"
    _block_type_slug = "segmind-credentials"
    _documentation_url = "https://docs.segmind.com/docs/get-started/authentication"  # type: ignore[assignment]
    _description = "Segmind API key (secret), server URL, timeouts and retry settings."

    api_key: SecretStr | None = Field(
        default=None,
        title="API key",
        description="Segmind API key; empty means the SEGMIND_API_KEY environment variable.",
    )
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description=(
            "Server root such as https://api.segmind.com or an emulator's URL; "
            "empty means SEGMIND_BASE_URL, then https://api.segmind.com."
        ),
    )
    concurrency_limit: str | None = Field(
        default=None,
        title="Prefect concurrency limit",
        description=(
            "Global concurrency limit each call holds a slot of while in flight, shared by "
            "every worker of one Prefect server (create it with python -m deployments.setup). "
            "Empty means SEGMIND_CONCURRENCY_LIMIT, then 'segmind'; that variable set to "
            "nothing means none. Not used without a Prefect server (PREFECT_API_URL)."
        ),
    )
    rate_limit: str | None = Field(
        default=None,
        title="Prefect rate limit",
        description=(
            "Global concurrency limit with decaying slots (a rate limit) each HTTP attempt "
            "takes a token of, capping calls per minute across every worker (python -m "
            "deployments.setup --rate-per-minute N creates 'segmind-rate'). Empty means "
            "SEGMIND_RATE_LIMIT, else none."
        ),
    )
    queue: bool | None = Field(
        default=None,
        title="Use the v2 queue",
        description=(
            "Submit each request to Segmind's queue and poll it, instead of one long /v1 "
            "call. The request id is stored before polling, so a crashed or retried task "
            "polls the same request again instead of paying twice. Empty means "
            "SEGMIND_QUEUE (1/true), else off."
        ),
    )
    queue_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        title="Queue timeout (s)",
        description=(
            "Queue mode: longest wait for a queued request to complete. The request is "
            "kept, so the task's retry polls it again."
        ),
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, title="Connect timeout (s)", description="Longest wait to connect."
    )
    read_timeout_s: float = Field(
        default=180.0,
        gt=0,
        title="Read timeout (s)",
        description="Longest wait for one answer; generations take 7 to 30 seconds.",
    )
    max_attempts: int = Field(
        default=RetryPolicy.max_attempts,
        ge=1,
        le=50,
        title="Attempts per call",
        description="HTTP attempts per call for transient failures, the first included.",
    )
    max_retry_time_s: float = Field(
        default=RetryPolicy.max_elapsed_s,
        gt=0,
        title="Retry budget (s)",
        description="No new attempt starts this many seconds after the first.",
    )
    backoff_initial_s: float = Field(
        default=RetryPolicy.backoff_initial_s,
        ge=0,
        title="First backoff (s)",
        description="Wait before the first retry when the service gives no Retry-After.",
    )
    backoff_max_s: float = Field(
        default=RetryPolicy.backoff_max_s,
        ge=0,
        title="Longest backoff (s)",
        description="Upper bound of the exponential backoff between two attempts.",
    )

    def resolved_api_key(self) -> SecretStr:
        """The key from this block or, failing that, the environment.

        Raises:
            AuthenticationError: when neither has a key, or the key cannot be sent.
        """
        if self.api_key is not None and self.api_key.get_secret_value():
            return checked_api_key(self.api_key, self.label())
        from_env = os.environ.get(API_KEY_ENV, "")
        if from_env:
            # The worker's key goes only to the worker's server: a block that names
            # another one (it may come inline with a run's parameters) brings its own.
            env_server = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
            if self.base_url and not _same_server(self.base_url, env_server):
                raise AuthenticationError(
                    f"the credentials name the server {display_url(self.base_url)} but "
                    f"carry no key, and the key in {API_KEY_ENV} is sent only to "
                    f"{display_url(env_server)} ({BASE_URL_ENV}, else Segmind's): save the "
                    f"key in the block, or set {BASE_URL_ENV} on the worker"
                )
            return checked_api_key(from_env, self.label())
        raise AuthenticationError(
            f"no Segmind API key: set {API_KEY_ENV} or save a SegmindCredentials block "
            "with an API key"
        )

    def resolved_concurrency_limit(self) -> str | None:
        """The global concurrency limit the calls hold slots of, or ``None`` for none."""
        if self.concurrency_limit:
            return self.concurrency_limit
        from_env = os.environ.get(CONCURRENCY_LIMIT_ENV)
        if from_env is not None:
            return from_env.strip() or None
        return DEFAULT_CONCURRENCY_LIMIT

    def resolved_rate_limit(self) -> str | None:
        """The rate limit each attempt takes a token of, or ``None`` for none."""
        return self.rate_limit or os.environ.get(RATE_LIMIT_ENV, "").strip() or None

    def resolved_queue(self) -> bool:
        """Whether calls go through the v2 queue: this block, else ``SEGMIND_QUEUE``."""
        if self.queue is not None:
            return self.queue
        return os.environ.get(QUEUE_ENV, "").strip().lower() in ("1", "true", "yes", "on")

    def resolved_base_url(self) -> str:
        """The server root from this block, the environment, or Segmind's."""
        return self.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL

    def label(self) -> str:
        """Where the key comes from, for messages: never the key itself."""
        if self.api_key is not None and self.api_key.get_secret_value():
            name = getattr(self, "_block_document_name", None)
            return f"block '{name}'" if name else "the SegmindCredentials given"
        return f"environment variable {API_KEY_ENV}"

    def get_client(self, logger: LoggerLike | None = None, **overrides: Any) -> SegmindClient:
        """A client configured from this block.

        Args:
            logger: Where retries are logged (a Prefect run logger inside tasks).
            **overrides: Extra keyword arguments for `SegmindClient`.

        Raises:
            AuthenticationError: when no key is configured anywhere.
        """
        settings: dict[str, Any] = {
            "base_url": self.resolved_base_url(),
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "retry": RetryPolicy(
                max_attempts=self.max_attempts,
                max_elapsed_s=self.max_retry_time_s,
                backoff_initial_s=self.backoff_initial_s,
                backoff_max_s=self.backoff_max_s,
            ),
            "credentials_label": self.label(),
            "logger": logger,
            "queue": self.resolved_queue(),
            "queue_timeout_s": self.queue_timeout_s,
        }
        settings.update(overrides)
        return SegmindClient(self.resolved_api_key(), **settings)


def _same_server(first: str, second: str) -> bool:
    """Whether two base URLs name the same server root (case and a final ``/`` aside)."""
    return first.strip().rstrip("/").lower() == second.strip().rstrip("/").lower()
