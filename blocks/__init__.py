"""Prefect blocks: Segmind credentials and object storage. Added by later issues."""
