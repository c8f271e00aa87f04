"""Settings of one emulator instance, shared by the command line and in-process use."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["EmulatorConfig", "FaultKind", "FaultRates", "parse_fault_spec"]


class FaultKind(StrEnum):
    """Failures the emulator can inject into generation requests.

    ``429``, ``500``, ``502``, ``503`` and ``504`` answer with that status and
    a JSON error. ``reset`` drops the connection with a TCP reset after reading the
    request. ``truncate`` sends a 200 whose body stops halfway. ``timeout``
    reads the request and then never answers, until the client gives up.
    None of them is billed, unless ``bill_cut_answers`` bills the generations
    that ``truncate`` cut short.
    """

    RATE_LIMITED = "429"
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    SERVICE_UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"
    RESET = "reset"
    TRUNCATE = "truncate"
    TIMEOUT = "timeout"


Rate = Annotated[float, Field(ge=0.0, le=1.0)]
FaultRates = dict[FaultKind, Rate]


def parse_fault_spec(spec: str) -> tuple[FaultKind, float]:
    """Parse one ``--fault CODE=RATE`` value, e.g. ``"500=0.1"``.

    Raises:
        ValueError: for an unknown kind or a rate outside 0..1.
    """
    kind_text, sep, rate_text = spec.partition("=")
    if not sep:
        raise ValueError(f"fault {spec!r} must look like CODE=RATE, e.g. 500=0.1")
    try:
        kind = FaultKind(kind_text.strip())
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault {kind_text!r}; known: {known}") from None
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"fault rate {rate_text!r} is not a number") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fault rate must be between 0 and 1, got {rate}")
    return kind, rate


def check_fault_rates(rates: FaultRates) -> FaultRates:
    """Reject fault rates that add up to more than 1."""
    total = sum(rates.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {total:g}; at most 1 is possible")
    return rates


class EmulatorConfig(BaseModel):
    """Everything that shapes how an emulator instance behaves.

    Attributes:
        host: Address to listen on; loopback by default.
        port: TCP port; 0 picks a free one.
        api_key: The only key the emulator accepts in ``x-api-key``.
        credits_usd: Starting balance; a call that costs more than what is left answers 406.
        latency_s: Seconds every generation takes, loading and rendering included.
        latency_jitter_s: Up to this many extra seconds, drawn uniformly per generation.
        max_concurrency: Generations in flight at once; v1 calls beyond it answer 429,
            v2 jobs beyond it wait in the queue.
        rpm: Generation requests accepted per rolling minute; more answer 429.
        retry_after_s: When set, 429 answers carry ``Retry-After`` with this many seconds.
        retry_after_rate: Share of 429 answers that carry ``Retry-After`` (when set).
        faults: Probability of each injected fault per generation request.
        fault_seed: Seed for the fault and jitter draws, for repeatable runs.
        timeout_hold_s: Longest a ``timeout`` fault keeps a connection open unanswered.
        bill_cut_answers: Bill a generation whose answer a ``truncate`` fault cut short
            (a v1 answer, or a v2 submission whose job then runs), as the service
            would: the image was made. Off by default: no fault is billed.
        queue_read_faults: Draw faults for v2 status polls, result reads and output
            downloads too (counted as ``"<kind> on read"``); by default only
            generation requests meet faults.
        result_ttl_s: How long v2 results and their output images stay available.
        allow_remote_inputs: Fetch input URLs on hosts other than loopback.
        max_input_bytes: Largest input image accepted, fetched or inline.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    api_key: SecretStr
    credits_usd: Annotated[Decimal, Field(ge=0)] = Decimal("100")
    latency_s: Annotated[float, Field(ge=0)] = 0.0
    latency_jitter_s: Annotated[float, Field(ge=0)] = 0.0
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    retry_after_s: Annotated[int, Field(ge=0)] | None = None
    retry_after_rate: Rate = 1.0
    faults: FaultRates = Field(default_factory=dict)
    fault_seed: int | None = None
    timeout_hold_s: Annotated[float, Field(gt=0)] = 300.0
    bill_cut_answers: bool = False
    queue_read_faults: bool = False
    result_ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    allow_remote_inputs: bool = False
    max_input_bytes: Annotated[int, Field(ge=1)] = 20 * 1024 * 1024

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the emulator needs a non-empty API key")
        return value

    @field_validator("faults")
    @classmethod
    def _rates_fit(cls, value: FaultRates) -> FaultRates:
        return check_fault_rates(value)
