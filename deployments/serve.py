"""Serve every deployment from this one process: the local path, no work pool or worker.

Run ``python -m deployments.serve`` with ``PREFECT_API_URL`` pointing at a
Prefect server. The deployments appear in the UI with their schedules and
forms; their runs execute in this process until it is stopped (Ctrl-C).
"""

from __future__ import annotations

from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from deployments.definitions import DEPLOYMENTS, DeploymentDefinition

__all__ = ["main", "runner_deployment"]


def runner_deployment(definition: DeploymentDefinition) -> RunnerDeployment:
    """The definition as a deployment ``serve`` can run."""
    options: dict[str, Any] = {}
    if definition.cron is not None:
        options["schedules"] = [Cron(definition.cron, timezone=definition.timezone)]
    deployment = definition.load_flow().to_deployment(
        name=definition.name,
        description=definition.description,
        parameters=definition.parameters,
        tags=list(definition.tags),
        enforce_parameter_schema=True,
        **options,
    )
    # Called from sync code, so a deployment, not a coroutine (the stubs allow both).
    return cast(RunnerDeployment, deployment)


def main() -> None:
    """Serve every deployment until interrupted."""
    serve(*(runner_deployment(definition) for definition in DEPLOYMENTS))


if __name__ == "__main__":
    main()
