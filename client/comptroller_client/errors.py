"""Exceptions raised by the Comptroller client."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comptroller_client.types import Allowance, BudgetStatus


class ComptrollerError(Exception):
    """Base class of every error this package raises."""


class ApiError(ComptrollerError):
    """Comptroller answered with the contract's error body (a 4xx it will not change its mind about)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class RateLimited(ApiError):
    """Comptroller kept answering 429 after every retry."""


class ComptrollerUnavailable(ComptrollerError):
    """Comptroller could not be reached and the feature fails closed, so the model was not called."""

    def __init__(self, message: str, *, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


class BudgetExceeded(ComptrollerError):
    """The allowance was denied: a budget has no room for this call. Nothing was held or called."""

    def __init__(self, allowance: Allowance) -> None:
        self.allowance = allowance
        self.budgets: tuple[BudgetStatus, ...] = tuple(b for b in allowance.budgets if b.binding)
        self.budget: BudgetStatus | None = self.budgets[0] if self.budgets else None
        self.retry_after: datetime | None = allowance.retry_after
        self.reason = allowance.reason or "budget_exhausted"
        names = ", ".join(repr(b.name) for b in self.budgets) or "a budget"
        when = f"; retry after {self.retry_after.isoformat()}" if self.retry_after else ""
        super().__init__(
            f"Comptroller denied {allowance.model} for feature {allowance.feature!r}: "
            f"{self.reason} on {names}{when}."
        )
