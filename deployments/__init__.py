"""Deployments: their definitions, ``prefect.yaml``'s twin, and a one-process ``serve`` path.

The work pool setup, the shared concurrency limit and the local stack
launcher come with the rest of issue 6.
"""
