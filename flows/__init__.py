"""Prefect flows that drive the stages in tasks/."""
