"""A tenant's policy, cached per process: its API keys, features, key restrictions, budgets, window ids.

The allowance is asked before every model call, so it must not re-read configuration
that changes a few times a day. Each process keeps the policy of the tenants it serves
and checks, on every request, one shared version number in the cache (Redis in
production); any change to a feature, budget, key or window bumps it (signals below, so
Django admin edits count too), and the next request reloads. Without a shared cache
(the embedded single-process default) the local copy is also dropped at once, and a
copy is never older than ``MAX_AGE_SECONDS``.

While Redis is unreachable the version lives in each process's memory (see
governance.shared_cache): a change made here applies here at once, one made in another
process within ``DEGRADED_MAX_AGE_SECONDS``; once Redis answers again, the changes made
meanwhile are published to every process.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from budgets.models import Budget, BudgetWindow
from governance.models import ApiKey, Feature, Tenant
from governance.shared_cache import outage

MAX_AGE_SECONDS = 30.0
DEGRADED_MAX_AGE_SECONDS = 5.0
MAX_WINDOW_IDS = 10_000  # run budgets make a window per run; keep the memo bounded


@dataclass
class TenantPolicy:
    version: str
    loaded_at: float
    tenant: Tenant
    features: dict[str, Feature]
    budgets: list[Budget]
    api_keys: dict[str, ApiKey | None] = field(default_factory=dict)  # by prefix
    key_features: dict[uuid.UUID, frozenset] = field(default_factory=dict)
    window_ids: dict[tuple, int] = field(default_factory=dict)
    # Worked out from the above per request before; kept here, so dropped with the policy.
    window_bounds: dict[Any, tuple[datetime, datetime | None]] = field(default_factory=dict)  # by budget id
    applicable: dict[tuple, list[Budget]] = field(default_factory=dict)  # by (feature id, model, run or not)

    def feature_by_id(self, pk) -> Feature | None:
        return next((f for f in self.features.values() if f.pk == pk), None)

    def api_key(self, prefix: str) -> ApiKey | None:
        """Return the tenant's key with this prefix (revoked ones too), or None."""
        if prefix not in self.api_keys:
            key = ApiKey.objects.filter(tenant=self.tenant, prefix=prefix).first()
            if key is not None:
                key.tenant = self.tenant
            self.api_keys[prefix] = key
        return self.api_keys[prefix]

    def key_feature_ids(self, key: ApiKey) -> frozenset:
        """Return the features this key is restricted to (empty: all of them)."""
        ids = self.key_features.get(key.pk)
        if ids is None:
            ids = frozenset(key.features.values_list("pk", flat=True))
            self.key_features[key.pk] = ids
        return ids

    def remember_windows(self, ids: dict[tuple, int]) -> None:
        if len(self.window_ids) > MAX_WINDOW_IDS:
            self.window_ids.clear()
        self.window_ids.update(ids)


_local: dict[int, TenantPolicy] = {}
_lock = threading.Lock()
# Tenants whose change could only be recorded in this process's memory (Redis unreachable).
_unpublished: set[int] = set()


def _version_key(tenant_id: int) -> str:
    return f"policy-version:{tenant_id}"


def _shared_version(tenant_id: int) -> str:
    version = cache.get(_version_key(tenant_id))
    if _unpublished and outage() is None:
        _publish_changes_made_during_outage()
        version = cache.get(_version_key(tenant_id))
    if version is None:
        cache.add(_version_key(tenant_id), uuid.uuid4().hex, timeout=None)
        version = cache.get(_version_key(tenant_id)) or ""
    return version


def _publish_changes_made_during_outage() -> None:
    while _unpublished:
        try:
            tenant_id = _unpublished.pop()
        except KeyError:  # another thread took the last one
            return
        cache.set(_version_key(tenant_id), uuid.uuid4().hex, timeout=None)
        if outage() is not None:  # down again: keep it for next time
            _unpublished.add(tenant_id)
            return


def tenant_policy(tenant_id: int) -> TenantPolicy:
    """Return the tenant's current policy, reloading it when it changed or grew old.

    Raise Tenant.DoesNotExist when the tenant is gone.
    """
    version = _shared_version(tenant_id)
    entry = _local.get(tenant_id)
    max_age = MAX_AGE_SECONDS if outage() is None else DEGRADED_MAX_AGE_SECONDS
    if entry is not None and entry.version == version and time.monotonic() - entry.loaded_at < max_age:
        return entry
    tenant = Tenant.objects.get(pk=tenant_id)
    features = {f.key: f for f in Feature.objects.filter(tenant=tenant)}
    budgets = list(Budget.objects.filter(tenant=tenant, active=True))
    for budget in budgets:
        budget.tenant = tenant
    entry = TenantPolicy(
        version=version, loaded_at=time.monotonic(), tenant=tenant, features=features, budgets=budgets
    )
    with _lock:
        _local[tenant_id] = entry
    return entry


def policy_changed(tenant_id: int) -> None:
    """Make every process reload this tenant's policy on its next request."""
    with _lock:
        _local.pop(tenant_id, None)
    cache.set(_version_key(tenant_id), uuid.uuid4().hex, timeout=None)
    if outage() is not None:
        _unpublished.add(tenant_id)


def _changed(sender, instance, **kwargs) -> None:
    if sender is Tenant:
        tenant_id = instance.pk
    elif sender is BudgetWindow:
        tenant_id = Budget.objects.filter(pk=instance.budget_id).values_list("tenant_id", flat=True).first()
        if tenant_id is None:
            return
    else:
        tenant_id = instance.tenant_id
    policy_changed(tenant_id)
    # Again once the change is committed, so no process keeps a copy read just before it.
    transaction.on_commit(lambda: policy_changed(tenant_id))


for _model in (Tenant, Feature, Budget, ApiKey):
    post_save.connect(_changed, sender=_model, dispatch_uid=f"policy-save-{_model.__name__}")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"policy-delete-{_model.__name__}")
post_delete.connect(_changed, sender=BudgetWindow, dispatch_uid="policy-delete-window")
m2m_changed.connect(_changed, sender=ApiKey.features.through, dispatch_uid="policy-key-features")
