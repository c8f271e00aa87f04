"""The process work pool's base job template: a run cannot change what the worker runs.

Prefect's default process template lets each flow run's job variables (the
UI's custom run, ``create_flow_run_from_deployment(job_variables=...)``, a
deployment's own ``job_variables``) set the run's ``env``, ``command`` and
``working_dir``: whoever may trigger a run could point ``SEGMIND_BASE_URL``
elsewhere, widen ``SEGMIND_INPUT_ROOTS`` or run any command on the worker.

`locked_base_job_template` keeps only the variables that change nothing the
run can use (`SAFE_VARIABLES`) and closes the schema
(``additionalProperties: false``), in two places:

- the server refuses (422) a flow run or deployment whose job variables name
  anything else, where it checks them (run creation from a deployment, a
  deployment created in the pool, a run-deployment automation);
- the worker builds the run's configuration from ``job_configuration`` alone,
  which has no ``env``, ``command`` or ``working_dir`` entry, so a job
  variable that reached it another way (``POST /flow_runs/`` checks none) is
  ignored: the run gets the worker's environment, Prefect's engine command and
  a fresh temporary folder. ``env`` is left out rather than fixed to ``{}``:
  Prefect merges a run's ``env`` into a fixed mapping whatever the schema says.
"""

from __future__ import annotations

import copy
from typing import Any

from prefect.workers.process import ProcessWorker

__all__ = ["REFUSED_VARIABLES", "SAFE_VARIABLES", "locked_base_job_template"]

SAFE_VARIABLES = ("name", "labels", "stream_output")
"""Job variables a run may still set: a process's display name, its labels (unused by
the process worker), and whether its output is copied to the worker's."""

REFUSED_VARIABLES = ("env", "command", "working_dir")
"""The default template's variables that change the run's environment, command or folder."""


def locked_base_job_template() -> dict[str, Any]:
    """Prefect's default process template with only `SAFE_VARIABLES`, closed to others."""
    default = copy.deepcopy(ProcessWorker.get_default_base_job_template())
    variables = default["variables"]
    return {
        "job_configuration": {
            key: value
            for key, value in default["job_configuration"].items()
            if key in SAFE_VARIABLES
        },
        "variables": {
            **variables,
            "properties": {
                key: value
                for key, value in variables.get("properties", {}).items()
                if key in SAFE_VARIABLES
            },
            "required": [key for key in variables.get("required", []) if key in SAFE_VARIABLES],
            "additionalProperties": False,
        },
    }
