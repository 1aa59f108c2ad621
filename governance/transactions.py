"""When a failed transaction is worth running again."""

from __future__ import annotations

from django.db import OperationalError

MAX_ATTEMPTS = 5


def is_retryable(exc: OperationalError) -> bool:
    """Return whether the database refused a transaction only because of a concurrent one."""
    text = str(exc).lower()
    return "deadlock" in text or "could not serialize" in text or "database is locked" in text
