"""API key secrets: how they are made and hashed (stored as prefix + hash, compared in constant time)."""

from __future__ import annotations

import hashlib
import secrets

KEY_SCHEME = "cpt"


def hash_secret(secret: str) -> str:
    """Return the hash a key's secret is stored and compared as."""
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_secret() -> tuple[str, str]:
    """Return a new (prefix, full secret) pair."""
    prefix = secrets.token_hex(6)
    return prefix, f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
