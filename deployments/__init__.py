"""Deployments: their definitions (``prefect.yaml``'s twin), setup, and a ``serve`` path.

Holding the shared concurrency limit in the tasks and the local stack
launcher come with the rest of issue 6.
"""
