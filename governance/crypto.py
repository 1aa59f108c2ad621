"""Encryption of secrets at rest (Slack webhook URLs, Anthropic admin keys) with Fernet.

``ENCRYPTION_KEYS`` holds one or more Fernet keys, newest first; old keys still
decrypt, so keys can be rotated. Without it a key is derived from SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


def _fernet() -> MultiFernet:
    keys = [k for k in settings.ENCRYPTION_KEYS if k]
    if not keys:
        derived = hashlib.sha256(f"comptroller-at-rest:{settings.SECRET_KEY}".encode()).digest()
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(k) for k in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str, *, ttl: int | None = None) -> str:
    """Return the plaintext; raise ValueError when no configured key opens the token (or it is older than ``ttl`` seconds)."""
    try:
        return _fernet().decrypt(token.encode(), ttl=ttl).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt: the encryption key has changed") from exc


def mask(secret: str, visible: int = 4) -> str:
    """Return a secret with all but its last few characters hidden."""
    if not secret:
        return ""
    return "…" + secret[-visible:] if len(secret) > visible else "…"


class EncryptedTextField(models.TextField):
    """A text field stored encrypted; reads give plaintext, the database sees only ciphertext."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)
