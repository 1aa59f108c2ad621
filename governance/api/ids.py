"""Public ids: a type prefix and a UUID, e.g. ``hold_3f2a…``; opaque to clients."""

from __future__ import annotations

import uuid

PREFIXES = {
    "hold": "hold",
    "budget": "bud",
    "apikey": "key",
    "alertchannel": "chan",
    "alert": "alert",
    "usageevent": "evt",
    "feature": "feat",
}


def public_id(obj) -> str:
    return f"{PREFIXES[obj._meta.model_name]}_{obj.pk.hex}"


def parse_public_id(value: str, kind: str) -> uuid.UUID | None:
    """Return the UUID inside a public id of ``kind``, or None if it is not one."""
    prefix = PREFIXES[kind] + "_"
    if not isinstance(value, str) or not value.startswith(prefix):
        return None
    try:
        return uuid.UUID(hex=value[len(prefix) :])
    except ValueError:
        return None
