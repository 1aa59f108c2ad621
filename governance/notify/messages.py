"""The human message for an alert: title, summary, facts and a link, shared by every transport."""

from __future__ import annotations

from django.conf import settings

from governance.notify.models import Alert
from governance.notify.transports import Message

# (data key, label), in the order people read them.
BUDGET_FACTS = [
    ("budget", "Budget"),
    ("scope", "Scope"),
    ("window", "Window"),
    ("spent", "Spent / limit"),
    ("percent", "Percent"),
    ("forecast", "Forecast at window end"),
    ("reaches_limit_at", "Limit reached"),
]


def budget_path(*, tenant_slug: str, budget_hex: str) -> str:
    return f"/t/{tenant_slug}/budgets/{budget_hex}/"


def absolute_url(path: str) -> str:
    return settings.SITE_URL.rstrip("/") + path


def alert_message(alert: Alert) -> Message:
    """Return what ``alert`` says, with its link into the web UI."""
    data = alert.data or {}
    facts = data.get("facts") or {}
    fields = [(label, str(facts[key])) for key, label in BUDGET_FACTS if facts.get(key) not in (None, "")]
    # Raisers other than budgets (drift, sync) may pass their own facts as [[label, value], ...].
    for pair in data.get("fields") or []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            fields.append((str(pair[0]), str(pair[1])))
    if alert.budget_id is not None:
        path = budget_path(tenant_slug=alert.tenant.slug, budget_hex=alert.budget_id.hex)
    else:
        path = data["path"] if isinstance(data.get("path"), str) and data["path"].startswith("/") else f"/t/{alert.tenant.slug}/"
    return Message(
        kind=alert.kind,
        title=alert.title,
        text=alert.body,
        fields=fields,
        url=absolute_url(path),
        tenant_name=alert.tenant.name,
    )


def channel_test_message(*, tenant) -> Message:
    """Return the message sent by a channel's test button."""
    return Message(
        kind="test",
        title="Test alert from Comptroller",
        text="This channel is set up correctly: budget alerts will arrive here.",
        fields=[("Tenant", tenant.name)],
        url=absolute_url(f"/t/{tenant.slug}/"),
        tenant_name=tenant.name,
    )
