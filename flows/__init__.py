"""Prefect flows that compose the endpoint tasks (edit, merge, batch). Added by later issues."""
