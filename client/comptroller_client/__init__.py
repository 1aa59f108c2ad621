"""comptroller-client: ask Comptroller before each Claude call and report after it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comptroller_client.client import (
    AsyncComptroller,
    AsyncHoldContext,
    Comptroller,
    HoldContext,
)
from comptroller_client.errors import (
    ApiError,
    BudgetExceeded,
    ComptrollerError,
    ComptrollerRedirect,
    ComptrollerUnavailable,
    RateLimited,
)
from comptroller_client.estimate import estimate_input_tokens
from comptroller_client.metering import usage_dict
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

if TYPE_CHECKING:  # the anthropic SDK is optional: governed() imports it when first used
    from comptroller_client.sdk import call_headers, governed

__version__ = "0.2.0"

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
    "ComptrollerRedirect",
    "ComptrollerUnavailable",
    "FeaturePolicy",
    "HoldContext",
    "RateLimited",
    "ReleaseResult",
    "Spool",
    "UsageRecord",
    "UsageReport",
    "call_headers",
    "estimate_input_tokens",
    "governed",
    "usage_dict",
]


def __getattr__(name: str) -> Any:
    if name in ("governed", "call_headers"):
        import importlib

        module = importlib.import_module("comptroller_client.sdk")

        return getattr(module, name)
    raise AttributeError(f"module 'comptroller_client' has no attribute {name!r}")
