"""Who did what: the actor of a write, and the audit trail every management write leaves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from governance.models import ApiKey, AuditEntry, Tenant


@dataclass(frozen=True)
class Actor:
    """The user or API key on whose behalf a service writes."""

    user: Any = None
    key: ApiKey | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls()


def _jsonable(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def audit_record(
    *,
    tenant: Tenant,
    actor: Actor,
    action: str,
    obj: Any,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    """Write one audit entry for a change to ``obj``."""
    user = actor.user if actor.user is not None and actor.user.is_authenticated else None
    return AuditEntry.objects.create(
        tenant=tenant,
        actor_user=user,
        actor_key=actor.key,
        action=action,
        object_type=obj._meta.model_name,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        before=_jsonable(before),
        after=_jsonable(after),
    )


def audit_update(*, actor: Actor, obj: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Record an update of a tenant-owned object, if its snapshot changed."""
    if after != before:
        audit_record(tenant=obj.tenant, actor=actor, action="update", obj=obj, before=before, after=after)


def audited_delete(*, actor: Actor, obj: Any, before: dict[str, Any]) -> None:
    """Delete a tenant-owned object and record it under the id it had."""
    pk = obj.pk
    obj.delete()
    obj.pk = pk
    audit_record(tenant=obj.tenant, actor=actor, action="delete", obj=obj, before=before)
