"""Prefect tasks, one per Segmind endpoint, over the core client. Added by later issues."""
