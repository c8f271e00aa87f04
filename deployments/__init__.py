"""Deployments: definitions (``prefect.yaml``'s twin), setup, a ``serve`` path, the local stack.

``definitions.py`` lists every deployment, ``setup.py`` prepares a Prefect
server for them (work pool, blocks, the ``segmind`` limits), ``serve.py`` runs
them all from one process, and ``stack.py`` starts and stops the whole local
stack (Prefect server and UI, the emulator, S3, workers) in one command.
"""
