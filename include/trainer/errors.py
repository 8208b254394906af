"""The trainer's own errors (the trainer is a package of its own: it does not import the DAG side)."""

from __future__ import annotations


class TrainerError(Exception):
    """Base of the errors the trainer raises on purpose."""
