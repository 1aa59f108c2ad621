"""Exceptions raised by the Comptroller client.

Each sets its attributes without calling ``super().__init__`` past
``Exception``, so ``governed`` can raise subclasses that are also the
Anthropic SDK's ``APIStatusError`` (``except anthropic.APIStatusError``
catches a denial too).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comptroller_client.types import Allowance, BudgetStatus


class ComptrollerError(Exception):
    """Base class of every error this package raises."""


class ApiError(ComptrollerError):
    """Comptroller answered with the contract's error body (a 4xx it will not change its mind about)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        Exception.__init__(self, f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after


class RateLimited(ApiError):
    """Comptroller kept answering 429 after every retry (``retry_after``: seconds it asked to wait)."""


class ComptrollerRedirect(ComptrollerError):
    """Comptroller answered a 3xx: the client's URL is wrong (``suggested_url`` is the one to use)."""

    def __init__(self, message: str, *, status: int, location: str, suggested_url: str | None) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.location = location
        self.suggested_url = suggested_url


class ComptrollerUnavailable(ComptrollerError):
    """Comptroller could not be reached and the feature fails closed, so the model was not called."""

    def __init__(self, message: str, *, feature: str | None = None) -> None:
        Exception.__init__(self, message)
        self.feature = feature


class BudgetExceeded(ComptrollerError):
    """The allowance was denied: a budget has no room for this call. Nothing was held or called.

    ``reason`` is ``budget_exhausted`` (the budget is spent) or
    ``exceeds_remaining`` (this call's worst case, ``requested_usd``, is more
    than the ``remaining_usd``: a smaller ``max_tokens`` may fit).
    """

    def __init__(self, allowance: Allowance) -> None:
        self.allowance = allowance
        self.budgets: tuple[BudgetStatus, ...] = tuple(b for b in allowance.budgets if b.binding)
        self.budget: BudgetStatus | None = self.budgets[0] if self.budgets else None
        self.retry_after: datetime | None = allowance.retry_after
        self.reason: str = allowance.reason or "budget_exhausted"
        self.requested_usd: Decimal | None = allowance.requested_usd
        remaining = allowance.remaining_usd
        if remaining is None:
            known = [b.remaining_usd for b in self.budgets if b.remaining_usd is not None]
            remaining = min(known) if known else None
        self.remaining_usd: Decimal | None = remaining
        self.requested_tokens: int | None = allowance.requested_tokens
        self.remaining_tokens: int | None = allowance.remaining_tokens
        names = ", ".join(repr(b.name) for b in self.budgets) or "a budget"
        amounts = ""
        if self.reason == "exceeds_remaining" and self.requested_usd is not None and remaining is not None:
            amounts = f" (this call may cost ${self.requested_usd}, ${remaining} remains)"
        when = f"; it resets at {self.retry_after.isoformat()}" if self.retry_after else ""
        Exception.__init__(
            self,
            f"Comptroller denied {allowance.model} for feature {allowance.feature!r}: "
            f"{self.reason} on {names}{amounts}{when}.",
        )
