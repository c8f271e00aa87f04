"""Prefect blocks of this project.

Register them with the Prefect server (once per server)::

    prefect block register -m blocks
"""

from blocks.object_storage import ObjectStorage
from blocks.segmind_credentials import SegmindCredentials

__all__ = ["ObjectStorage", "SegmindCredentials"]
