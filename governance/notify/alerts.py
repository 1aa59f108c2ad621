"""Recording alerts, each exactly once: the alert layer's one write.

Evaluators (``budgets.alerting`` for budget windows, ``usage.provider.services`` for the
bill, and the receiver below for unpriced usage) call ``alert_raise``; delivery
(``governance.notify.services``) hears of each new alert through ``post_save`` and queues its
notifications. Nothing here knows channels, and nothing in delivery knows budget rules.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from django.db import IntegrityError, transaction
from django.dispatch import receiver

from governance.models import Tenant
from governance.notify.models import Alert, AlertKind
from usage.services import event_tokens
from usage.signals import usage_recorded

logger = logging.getLogger(__name__)


@transaction.atomic
def alert_raise(
    *,
    tenant: Tenant,
    kind: str,
    dedup_key: str,
    title: str,
    body: str,
    data: dict | None = None,
    budget: Any = None,
    window: Any = None,
    threshold: int | None = None,
) -> Alert | None:
    """Record an alert once (its deliveries follow once the transaction commits).

    Return None when an alert with this dedup key already exists for the tenant: the
    unique constraint, not a prior read, decides, so racing raisers yield exactly one.
    ``budget``, ``window`` and ``threshold`` link a budget alert to what it is about.
    """
    if kind not in AlertKind.values:
        raise ValueError(f"unknown alert kind {kind!r}")
    try:
        with transaction.atomic():
            return Alert.objects.create(
                tenant=tenant,
                kind=kind,
                dedup_key=dedup_key[:255],
                title=title[:300],
                body=body,
                data=data or {},
                budget=budget,
                window=window,
                threshold=threshold,
            )
    except IntegrityError:
        return None


@receiver(usage_recorded, dispatch_uid="alerts.unpriced_usage")
def unpriced_usage_alert(sender, *, tenant: Tenant, events: list, **kwargs) -> None:
    """Raise ``unpriced_usage`` once per model and tenant-local day for events recorded without a price.

    The call happened and is kept (tokens, and the hold model's price for a commit); the
    alert asks an operator to load the model's price (``manage.py prices_load``).
    """
    unpriced: dict[tuple[str, str], list] = defaultdict(list)
    for event in events:
        if not event.priced:
            unpriced[(event.model, event.occurred_at.astimezone(tenant.tz).date().isoformat())].append(event)
    for (model, day), group in sorted(unpriced.items()):
        tokens = sum(event_tokens(e) for e in group)
        alert_raise(
            tenant=tenant,
            kind="unpriced_usage",
            dedup_key=f"unpriced_usage:{tenant.pk}:{model}:{day}",
            title=f"No price for {model}",
            body=(
                f"Calls to {model} on {day} were recorded ({tokens} tokens so far), but the price catalog "
                f"has no price for it, so they count at $0 or at their hold's model price. Load its price "
                f"with `manage.py prices_load`; later usage is then priced."
            ),
            data={"model": model, "day": day, "tokens": tokens, "source": "ledger"},
        )
