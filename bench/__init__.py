"""Benchmarks: scripts that print numbers (see the README)."""
