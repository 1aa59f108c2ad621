"""Typed results of the Comptroller API. Money is ``Decimal`` USD, never float."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    # Python 3.9/3.10 fromisoformat does not accept the "Z" suffix.
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def parse_usd(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True)
class BudgetStatus:
    """One budget's current window, as Comptroller reports it with allowances and policies."""

    id: str
    name: str
    scope: str
    period: str
    enforcement: str
    binding: bool = False
    window_start: datetime | None = None
    window_end: datetime | None = None
    limit_usd: Decimal | None = None
    spent_usd: Decimal | None = None
    reserved_usd: Decimal | None = None
    remaining_usd: Decimal | None = None
    limit_tokens: int | None = None
    spent_tokens: int | None = None
    reserved_tokens: int | None = None
    remaining_tokens: int | None = None
    run_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BudgetStatus:
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            scope=str(data.get("scope", "")),
            period=str(data.get("period", "")),
            enforcement=str(data.get("enforcement", "")),
            binding=bool(data.get("binding", False)),
            window_start=parse_time(data.get("window_start")),
            window_end=parse_time(data.get("window_end")),
            limit_usd=parse_usd(data.get("limit_usd")),
            spent_usd=parse_usd(data.get("spent_usd")),
            reserved_usd=parse_usd(data.get("reserved_usd")),
            remaining_usd=parse_usd(data.get("remaining_usd")),
            limit_tokens=data.get("limit_tokens"),
            spent_tokens=data.get("spent_tokens"),
            reserved_tokens=data.get("reserved_tokens"),
            remaining_tokens=data.get("remaining_tokens"),
            run_id=data.get("run_id"),
        )


def budgets_from(data: dict[str, Any]) -> tuple[BudgetStatus, ...]:
    return tuple(BudgetStatus.from_json(b) for b in data.get("budgets") or ())


@dataclass(frozen=True)
class Allowance:
    """The answer to "may I make this call?": a hold to commit or release, or a denial.

    ``offline`` is true when Comptroller was unreachable and the feature fails
    open: nothing is held, and the usage is reported later from the spool.
    """

    id: str | None
    granted: bool
    decision: str
    model: str
    max_tokens: int
    feature: str
    requested_model: str
    reason: str | None = None
    clamped: bool = False
    reserved_usd: Decimal = Decimal("0")
    reserved_tokens: int = 0
    expires_at: datetime | None = None
    retry_after: datetime | None = None
    budgets: tuple[BudgetStatus, ...] = ()
    service_tier: str = "standard"
    run_id: str | None = None
    metadata: dict[str, Any] | None = field(default=None, repr=False)
    offline: bool = False
    input_tokens: int = 0  # the estimate this allowance was asked with
    requested_usd: Decimal | None = None  # the worst case priced (denials: what did not fit)
    remaining_usd: Decimal | None = None
    requested_tokens: int | None = None
    remaining_tokens: int | None = None

    @property
    def binding_budgets(self) -> tuple[BudgetStatus, ...]:
        return tuple(b for b in self.budgets if b.binding)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, request: dict[str, Any]) -> Allowance:
        return cls(
            id=data.get("id"),
            granted=bool(data.get("granted")),
            decision=str(data.get("decision") or ("granted" if data.get("granted") else "denied")),
            reason=data.get("reason"),
            model=str(data.get("model") or request["model"]),
            max_tokens=int(data.get("max_tokens") or request["max_tokens"]),
            clamped=bool(data.get("clamped", False)),
            reserved_usd=parse_usd(data.get("reserved_usd")) or Decimal("0"),
            reserved_tokens=int(data.get("reserved_tokens") or 0),
            expires_at=parse_time(data.get("expires_at")),
            retry_after=parse_time(data.get("retry_after")),
            budgets=budgets_from(data),
            feature=request["feature"],
            requested_model=request["model"],
            service_tier=request.get("service_tier", "standard"),
            run_id=request.get("run_id"),
            metadata=request.get("metadata"),
            input_tokens=int(request.get("input_tokens") or 0),
            requested_usd=parse_usd(data.get("requested_usd")),
            remaining_usd=parse_usd(data.get("remaining_usd")),
            requested_tokens=data.get("requested_tokens"),
            remaining_tokens=data.get("remaining_tokens"),
        )


@dataclass(frozen=True)
class CommitResult:
    """The hold's settlement: actual cost, what went back to the budgets, the ledger row.

    ``spooled`` is true when Comptroller was unreachable: the commit waits in the
    local spool and is sent when Comptroller is back; the amounts are then unknown.
    """

    id: str | None
    state: str
    cost_usd: Decimal | None = None
    released_usd: Decimal | None = None
    usage_event_id: str | None = None
    late: bool = False
    budgets: tuple[BudgetStatus, ...] = ()
    spooled: bool = False
    priced: bool = True  # false: the model has no price yet; recorded, priced later

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitResult:
        return cls(
            id=data.get("id"),
            state=str(data.get("state", "committed")),
            cost_usd=parse_usd(data.get("cost_usd")),
            released_usd=parse_usd(data.get("released_usd")),
            usage_event_id=data.get("usage_event_id"),
            late=bool(data.get("late", False)),
            budgets=budgets_from(data),
            priced=data.get("priced") is not False,
        )


@dataclass(frozen=True)
class ReleaseResult:
    id: str | None
    state: str
    spooled: bool = False


@dataclass(frozen=True)
class UsageRecord:
    """One reported event: ``recorded``, ``duplicate`` (already in the ledger) or ``spooled``."""

    request_id: str
    status: str
    cost_usd: Decimal | None = None
    usage_event_id: str | None = None


@dataclass(frozen=True)
class UsageReport:
    results: tuple[UsageRecord, ...]

    @property
    def spooled(self) -> bool:
        return any(r.status == "spooled" for r in self.results)


@dataclass(frozen=True)
class FeaturePolicy:
    """A feature's policy, as clients cache it (``GET /api/v1/features/{key}``)."""

    key: str
    fail_mode: str = "open"
    default_model: str = ""
    allowed_models: tuple[str, ...] = ()
    fallback_models: tuple[str, ...] = ()
    max_tokens_cap: int | None = None
    interactive: bool = True
    active: bool = True
    budgets: tuple[BudgetStatus, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeaturePolicy:
        return cls(
            key=str(data.get("key", "")),
            fail_mode=str(data.get("fail_mode") or "open"),
            default_model=str(data.get("default_model") or ""),
            allowed_models=tuple(data.get("allowed_models") or ()),
            fallback_models=tuple(data.get("fallback_models") or ()),
            max_tokens_cap=data.get("max_tokens_cap"),
            interactive=bool(data.get("interactive", True)),
            active=bool(data.get("active", True)),
            budgets=budgets_from(data),
        )
