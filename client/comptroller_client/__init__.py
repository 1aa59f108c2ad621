"""comptroller-client: ask Comptroller before each Claude call and report after it."""

from __future__ import annotations

from typing import Any

from comptroller_client.client import (
    AsyncComptroller,
    AsyncHoldContext,
    Comptroller,
    HoldContext,
    usage_dict,
)
from comptroller_client.errors import (
    ApiError,
    BudgetExceeded,
    ComptrollerError,
    ComptrollerUnavailable,
    RateLimited,
)
from comptroller_client.estimate import estimate_input_tokens
from comptroller_client.spool import Spool
from comptroller_client.types import (
    Allowance,
    BudgetStatus,
    CommitResult,
    FeaturePolicy,
    ReleaseResult,
    UsageRecord,
    UsageReport,
)

__version__ = "0.1.0"

__all__ = [
    "Allowance",
    "ApiError",
    "AsyncComptroller",
    "AsyncHoldContext",
    "BudgetExceeded",
    "BudgetStatus",
    "CommitResult",
    "Comptroller",
    "ComptrollerError",
    "ComptrollerUnavailable",
    "FeaturePolicy",
    "HoldContext",
    "RateLimited",
    "ReleaseResult",
    "Spool",
    "UsageRecord",
    "UsageReport",
    "estimate_input_tokens",
    "governed",
    "usage_dict",
]


def governed(client: Any, comptroller: Any, **options: Any) -> Any:
    """Wrap an Anthropic client so each call asks Comptroller first; see ``comptroller_client.governed``."""
    from comptroller_client.governed import governed as wrap

    return wrap(client, comptroller, **options)
