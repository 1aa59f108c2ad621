"""What an Anthropic connection must look like, and a one-call test of it.

Admin keys start ``sk-ant-admin`` (only organisation admins can create them); a regular
API key (``sk-ant-api…``) cannot read the usage and cost reports, so it is refused here
with that reason rather than failing every sync later. The test reads one hour of the
usage report, once, with no retries: the answer is what the person pressing the button
needs to see, and it never touches the sync cursors.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from usage.provider.client import AdminApiClient, ProviderError

ADMIN_KEY_RE = re.compile(r"sk-ant-admin\d{2}-[A-Za-z0-9_-]{8,400}")
INFERENCE_KEY_RE = re.compile(r"sk-ant-[A-Za-z0-9_-]{8,400}")
WORKSPACE_ID_RE = re.compile(r"wrkspc_[A-Za-z0-9]{1,100}")
API_KEY_ID_RE = re.compile(r"apikey_[A-Za-z0-9]{1,100}")
TEST_TIMEOUT_SECONDS = 10.0


def admin_key_problem(key: str) -> str | None:
    """Return why ``key`` cannot be an Anthropic Admin API key, or None."""
    if key.startswith("sk-ant-api"):
        return (
            "That is a regular API key (sk-ant-api…). The usage and cost reports need an Admin API "
            "key (sk-ant-admin…), which an organisation admin creates in the Anthropic Console."
        )
    if not ADMIN_KEY_RE.fullmatch(key):
        return "An Anthropic Admin API key looks like sk-ant-admin01-… (letters, digits, - and _)."
    return None


def inference_key_problem(key: str) -> str | None:
    """Return why ``key`` cannot be the Anthropic API key the gateway calls the Messages API with, or None."""
    if key.startswith("sk-ant-admin"):
        return (
            "That is an Admin API key (sk-ant-admin…), which cannot call the Messages API. The gateway "
            "needs a regular API key (sk-ant-api…) of the organisation."
        )
    if not INFERENCE_KEY_RE.fullmatch(key):
        return "An Anthropic API key looks like sk-ant-api03-… (letters, digits, - and _)."
    return None


def workspace_id_problem(value: str) -> str | None:
    if not WORKSPACE_ID_RE.fullmatch(value):
        return f"“{value[:40]}” is not an Anthropic workspace id (wrkspc_ followed by letters and digits)."
    return None


def api_key_id_problem(value: str) -> str | None:
    if not API_KEY_ID_RE.fullmatch(value):
        return f"“{value[:40]}” is not an Anthropic API key id (apikey_ followed by letters and digits)."
    return None


@dataclass(frozen=True)
class ConnectionTest:
    ok: bool
    message: str
    status: int | None  # the HTTP status Anthropic answered, None when it was not reached
    duration_ms: int


def connection_test(*, admin_key: str, base_url: str | None = None, workspace_ids: list[str] | None = None,
                    now: datetime | None = None) -> ConnectionTest:
    """Call the Admin API once (the last full hour of the usage report) and say what it answered."""
    if not admin_key:
        # A connection may hold only the gateway's key; sending an empty one would only earn a 401.
        return ConnectionTest(
            False, "No Admin API key is saved, so there is no usage report to read: add one (sk-ant-admin…) "
            "to sync usage and cost. The gateway's API key is not tested here.", None, 0,
        )
    now = now or timezone.now()
    end = now.replace(minute=0, second=0, microsecond=0)
    started = time.monotonic()
    client = AdminApiClient(
        api_key=admin_key, base_url=base_url or settings.ANTHROPIC_API_BASE_URL,
        timeout=TEST_TIMEOUT_SECONDS, max_attempts=1,
    )
    try:
        with client:
            # One hour, one bucket: a single request, whatever the pagination.
            bucket = next(iter(client.usage_buckets(
                starting_at=end - timedelta(hours=1), ending_at=end, workspace_ids=workspace_ids, limit=1,
            )), None)
    except ProviderError as exc:
        return ConnectionTest(False, f"Anthropic did not accept the test: {exc}", exc.status, _ms(started))
    rows = len(bucket["results"]) if bucket else 0
    hour = f"{end - timedelta(hours=1):%H:%M}–{end:%H:%M} UTC"
    return ConnectionTest(
        True,
        f"Connected: Anthropic answered the usage report for {hour} with {rows} result row{'s' if rows != 1 else ''}.",
        200,
        _ms(started),
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
