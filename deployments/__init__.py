"""Deployments, schedules and the local stack launcher. Added by later issues."""
