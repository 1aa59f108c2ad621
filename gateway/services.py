"""The gateway's side of the allowance flow: who calls, what a request may cost, reserve, settle.

Synchronous (the ORM and the budget services are); the views run each step in
``gateway.db``'s threads. The decision itself is the REST API's: ``allowance_request``,
``hold_commit`` and ``hold_release`` of ``budgets.services``, so a call through the
gateway and one through ``POST /api/v1/allowances`` meet the same budgets, locks and
idempotency. The worst case and the metering are the client package's
(``comptroller_client.estimate`` and ``.metering``), so the gateway sizes and meters a
request exactly as ``governed()`` does in a Python service.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comptroller_client.estimate import (
    RequestSize,
    WorstCase,
    expected_ttl_seconds,
    size_request,
    worst_case,
)
from comptroller_client.metering import Metered
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from budgets import services as budget_services
from budgets.models import Budget, BudgetWindow, Period, Scope
from budgets.policy import TenantPolicy
from gateway.errors import GatewayError, invalid
from governance.api.authentication import LAST_USED_RESOLUTION, key_from_secret
from governance.api.fields import nano_to_usd
from governance.api.ids import public_id
from governance.api.throttling import parse_rate
from governance.models import ApiKey, Feature
from governance.shared_cache import count_in_window
from usage.pricing import TokenUsage
from usage.provider.models import ProviderConnection

logger = logging.getLogger(__name__)

MAX_HOLD_TOKENS = 1_000_000  # the most max_tokens an allowance takes
ALLOWANCE_FIELDS = {f.name for f in dataclasses.fields(budget_services.AllowanceRequest)}
COMMIT_FIELDS = {f.name for f in dataclasses.fields(budget_services.CommitData)}


@dataclass(frozen=True)
class Caller:
    """A request's Comptroller key, its tenant's policy and feature, and the Anthropic key to call with."""

    key: ApiKey
    policy: TenantPolicy
    feature: Feature | None  # None only for count_tokens, which is not governed
    upstream_key: str
    base_url: str


@dataclass(frozen=True)
class CallOptions:
    """What the caller's ``x-comptroller-*`` and ``Idempotency-Key`` headers ask for."""

    feature: str = ""
    run_id: str = ""
    idempotency_key: str = ""
    ttl_seconds: int | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class Reservation:
    """A granted allowance for one forwarded call, and what the response must be settled against."""

    caller: Caller
    decision: budget_services.AllowanceDecision
    worst: WorstCase
    input_estimate: int  # the prompt's size by the local rules or count_tokens: charged if nothing is metered
    requested_model: str
    requested_max_tokens: int
    request_id: str

    @property
    def feature(self) -> Feature:
        assert self.caller.feature is not None
        return self.caller.feature

    @property
    def hold_id(self) -> str:
        assert self.decision.hold is not None
        return public_id(self.decision.hold)

    def body_changes(self) -> dict[str, Any]:
        """Return what the forwarded body must say instead of the caller's (a downgrade, a clamp)."""
        changes: dict[str, Any] = {}
        if self.decision.decision == "downgraded":
            changes["model"] = self.decision.model
        if self.decision.max_tokens != self.requested_max_tokens:
            changes["max_tokens"] = self.decision.max_tokens
        return changes

    def headers(self) -> dict[str, str]:
        decision = self.decision
        headers = {
            "x-comptroller-decision": decision.decision,
            "x-comptroller-hold": self.hold_id,
            "x-comptroller-feature": self.feature.key,
            "x-comptroller-model": decision.model,
            "x-comptroller-max-tokens": str(decision.max_tokens),
            "x-comptroller-reserved-usd": nano_to_usd(decision.amount_nano) or "0",
            "x-comptroller-input-basis": self.worst.basis,
        }
        headers.update(remaining_headers(decision.windows))
        return headers

    def decision_metadata(self) -> dict[str, Any]:
        """Return what the usage event keeps of the decision (``metadata.gateway``)."""
        return {
            "request": self.request_id,
            "decision": self.decision.decision,
            "requested_model": self.requested_model,
            "model": self.decision.model,
            "requested_max_tokens": self.requested_max_tokens,
            "max_tokens": self.decision.max_tokens,
            "clamped": self.decision.clamped,
            "input_basis": self.worst.basis,
            "input_tokens_held": self.worst.input_tokens,
        }


def remaining_headers(windows: list[BudgetWindow]) -> dict[str, str]:
    """Return the least remaining USD and tokens over these windows (what is left before a refusal)."""
    usd = [w.budget.limit_nano - w.spent_nano - w.reserved_nano for w in windows if w.budget.limit_nano is not None]
    tokens = [
        w.budget.limit_tokens - w.spent_tokens - w.reserved_tokens for w in windows if w.budget.limit_tokens is not None
    ]
    headers = {}
    if usd:
        headers["x-comptroller-remaining-usd"] = nano_to_usd(min(usd)) or "0"
    if tokens:
        headers["x-comptroller-remaining-tokens"] = str(min(tokens))
    return headers


# --- who is calling ---------------------------------------------------------------------------


def caller_resolve(*, secret: str, options: CallOptions, need_feature: bool = True) -> Caller:
    """Return the caller of a gateway request: its key, feature and the tenant's Anthropic key."""
    found = key_from_secret(secret) if secret else None
    if found is None:
        raise GatewayError(
            401, "authentication_error",
            "Send a Comptroller service key (cpt_…) as x-api-key or as Authorization: Bearer; this one is "
            "unknown, revoked or malformed." if secret else
            "Send a Comptroller service key (cpt_…) as x-api-key or as Authorization: Bearer.",
        )
    key, policy = found
    _touch(key)
    _rate_limit(key)
    feature = _feature(key, policy, options.feature) if need_feature else None
    connection = (
        ProviderConnection.objects.filter(tenant_id=key.tenant_id)
        .values_list("inference_api_key", "base_url").first()
    )
    upstream_key, base_url = connection or ("", "")
    if not upstream_key:
        raise GatewayError(
            403, "permission_error",
            "This tenant has no Anthropic API key for the gateway: an owner sets one on the Anthropic "
            "connection page, or with PUT /api/v1/provider-connection {\"inference_api_key\": \"sk-ant-api…\"}.",
        )
    return Caller(key=key, policy=policy, feature=feature, upstream_key=upstream_key,
                  base_url=base_url or settings.ANTHROPIC_API_BASE_URL)


def _touch(key: ApiKey) -> None:
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        # At most one write a minute per key, as for the REST API.
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def _rate_limit(key: ApiKey) -> None:
    """Count the call against the key's API_RATE_LIMIT: the same counter as its REST calls."""
    limit, period = parse_rate(settings.API_RATE_LIMIT)
    now = time.time()
    window = int(now // period)
    if count_in_window(f"rl:{key.pk.hex}:{period}:{window}", period + 1) > limit:
        wait = max(1, math.ceil((window + 1) * period - now))
        raise GatewayError(
            429, "rate_limit_error", f"This Comptroller key is over its rate limit ({settings.API_RATE_LIMIT}); "
            f"retry in {wait} s.", retry=True, headers={"retry-after": str(wait)},
        )


def _feature(key: ApiKey, policy: TenantPolicy, wanted: str) -> Feature:
    if wanted:
        try:
            return budget_services.feature_for_call(tenant=policy.tenant, api_key=key, key=wanted, policy=policy)
        except budget_services.AllowanceError as exc:
            raise refusal_for(exc) from None
    allowed = policy.key_feature_ids(key)
    if len(allowed) == 1:
        feature = policy.feature_by_id(next(iter(allowed)))
        if feature is not None:
            return feature
    raise invalid(
        "Name the feature this call belongs to with the x-comptroller-feature header (or use a key restricted "
        "to exactly one feature)."
    )


# --- what a request may cost -----------------------------------------------------------------


def request_check(body: Any) -> dict[str, Any]:
    """Return the body if it is a Messages request the gateway can size, else raise a 400."""
    if not isinstance(body, dict):
        raise invalid("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required (a model id, e.g. claude-sonnet-4-5).")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_HOLD_TOKENS:
        raise invalid(f"max_tokens: Field required, a whole number from 1 to {MAX_HOLD_TOKENS}.")
    if not isinstance(body.get("messages"), list):
        raise invalid("messages: Field required (a list of messages).")
    return body


def request_size(body: Mapping[str, Any]) -> RequestSize:
    """Size the request by the client package's local rules (no I/O)."""
    try:
        return size_request(body)
    except (TypeError, ValueError, AttributeError) as exc:
        raise invalid(f"The request's messages, system or tools are not in the Messages API's shape ({exc}).") from None


def should_count(size: RequestSize) -> bool:
    """Return whether to ask Anthropic's count_tokens before the allowance (what the rules cannot size)."""
    return bool(size.unsized) and settings.GATEWAY_COUNT_TOKENS == "auto"


# --- the allowance ----------------------------------------------------------------------------


def call_reserve(
    *, caller: Caller, body: Mapping[str, Any], size: RequestSize, counted: int | None, options: CallOptions
) -> Reservation:
    """Ask the allowance for the request's worst case; raise a GatewayError for a denial or a refusal."""
    assert caller.feature is not None
    worst = worst_case(body, size=size, counted_input_tokens=counted, input_ceiling=settings.GATEWAY_INPUT_CEILING)
    request_id = uuid.uuid4().hex
    fields: dict[str, Any] = {
        **worst.allowance_fields(),
        "feature": caller.feature.key,
        "model": str(body["model"]),
        "run_id": options.run_id,
        "idempotency_key": options.idempotency_key,
        # A repeat of an Idempotency-Key differs in this, so the allowance refuses it (409): the
        # gateway cannot replay an Anthropic response, and must not forward the call twice.
        "metadata": {**options.metadata, "gateway_request": request_id},
        "ttl_seconds": options.ttl_seconds or expected_ttl_seconds(body, size) or 600,
    }
    unknown = set(fields) - ALLOWANCE_FIELDS
    if unknown - {"inference_geo", "speed", "max_web_searches"}:
        raise AssertionError(f"the allowance does not take {sorted(unknown)}")
    # Until the allowance takes them (issue 13), geo, speed and searches are priced by the commit.
    req = budget_services.AllowanceRequest(**{k: v for k, v in fields.items() if k in ALLOWANCE_FIELDS})
    try:
        decision = budget_services.allowance_request(
            tenant=caller.policy.tenant, api_key=caller.key, req=req, policy=caller.policy
        )
    except budget_services.AllowanceError as exc:
        raise refusal_for(exc) from None
    if not decision.granted:
        raise denial_for(decision, feature=caller.feature)
    return Reservation(
        caller=caller, decision=decision, worst=worst,
        input_estimate=counted if counted is not None else size.input_tokens,
        requested_model=str(body["model"]), requested_max_tokens=int(body["max_tokens"]), request_id=request_id,
    )


def refusal_for(exc: budget_services.AllowanceError) -> GatewayError:
    """Return the Anthropic-shaped answer to a request the allowance refused before deciding."""
    if exc.code == "forbidden":
        return GatewayError(403, "permission_error", exc.message)
    if exc.code == "conflict":
        return GatewayError(
            409, "invalid_request_error",
            "This Idempotency-Key was already used: the gateway forwards one call per key and cannot "
            "replay its answer. Send a new key for a new call.",
        )
    if exc.code == "unavailable":
        return GatewayError(503, "overloaded_error", exc.message, retry=True)
    return GatewayError(400, "invalid_request_error", exc.message)


def denial_for(decision: budget_services.AllowanceDecision, *, feature: Feature) -> GatewayError:
    """Return the 403 ``budget_exceeded`` for a denied allowance: which budget, what is left, when it resets."""
    binding = [w for w in decision.windows if w.id in decision.binding_ids] or decision.windows
    parts = [_window_phrase(w, decision) for w in binding]
    resets = decision.retry_after
    message = (
        f"Comptroller denied this call (feature {feature.key}, {decision.model}): "
        + "; ".join(parts)
        + (f". It resets at {resets.strftime('%Y-%m-%dT%H:%M:%SZ')}." if resets else
           ". It does not reset by itself (a total or run budget): raise its limit to go on.")
    )
    headers = {
        "x-comptroller-decision": "denied",
        "x-comptroller-feature": feature.key,
        "x-comptroller-budget": ", ".join(_ascii(w.budget.name) for w in binding),
    }
    if resets:
        headers["x-comptroller-resets-at"] = resets.strftime("%Y-%m-%dT%H:%M:%SZ")
    headers.update(remaining_headers(binding))
    return GatewayError(403, "budget_exceeded", message, headers=headers)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()


PERIODS: dict[str, str] = {Period.DAY: "daily", Period.WEEK: "weekly", Period.MONTH: "monthly", Period.TOTAL: "total"}


def _window_phrase(window: BudgetWindow, decision: budget_services.AllowanceDecision) -> str:
    budget: Budget = window.budget
    scopes: dict[str, str] = {Scope.TENANT: "tenant", Scope.FEATURE: "feature", Scope.RUN: f"run {window.run_id}"}
    scope = scopes.get(
        budget.scope, budget.scope
    )
    kind = "run" if budget.scope == Scope.RUN else PERIODS.get(budget.period, budget.period)
    left = []
    if budget.limit_nano is not None:
        remaining = max(0, budget.limit_nano - window.spent_nano - window.reserved_nano)
        left.append(f"${nano_to_usd(remaining)} of ${nano_to_usd(budget.limit_nano)} left, "
                    f"this call may cost up to ${nano_to_usd(decision.amount_nano)}")
    if budget.limit_tokens is not None:
        remaining_tokens = max(0, budget.limit_tokens - window.spent_tokens - window.reserved_tokens)
        left.append(f"{remaining_tokens} of {budget.limit_tokens} tokens left, "
                    f"this call may use up to {decision.tokens}")
    return f"budget '{budget.name}' ({kind}, {scope}) has " + " and ".join(left)


# --- after the call ---------------------------------------------------------------------------


def call_settle(*, reservation: Reservation, metered: Metered | None, outcome: str) -> None:
    """Commit what the response showed was used (also a stream cut short), or release the hold.

    ``metered`` None, or a response that billed nothing (an error status, an error event
    before ``message_start``): the hold is released. Nothing raises: a commit the database
    refuses is logged, and the hold expires on its own.
    """
    body = metered.commit_body(input_estimate=reservation.input_estimate) if metered is not None else None
    tenant = reservation.caller.policy.tenant
    hold = reservation.decision.hold
    assert hold is not None
    for attempt in (1, 2):
        try:
            if body is None:
                budget_services.hold_release(tenant=tenant, hold_id=hold.pk)
            else:
                _commit(reservation, body, outcome)
            return
        except budget_services.AllowanceError as exc:
            logger.warning("gateway settle of %s refused: %s %s", reservation.hold_id, exc.code, exc.message)
            return
        except DatabaseError:
            if attempt == 2:
                logger.exception("gateway settle of %s failed; the hold will expire", reservation.hold_id)


def _commit(reservation: Reservation, body: dict[str, Any], outcome: str) -> None:
    usage = body["usage"]
    metadata = {**body.get("metadata", {}), "gateway": {**reservation.decision_metadata(), "outcome": outcome}}
    values: dict[str, Any] = {
        "usage": TokenUsage.from_anthropic(usage),
        "model": body.get("model") or "",
        "service_tier": usage.get("service_tier") if usage.get("service_tier") in ("standard", "batch", "priority")
        else "",
        "inference_geo": str(usage.get("inference_geo") or ""),
        "speed": "fast" if usage.get("speed") == "fast" else "",
        "request_id": str(body.get("request_id") or ""),
        "stop_reason": str(body.get("stop_reason") or ""),
        "latency_ms": body.get("latency_ms"),
        "ttft_ms": body.get("ttft_ms"),
        "streamed": body.get("streamed"),
        "metadata": metadata,
    }
    data = budget_services.CommitData(**{k: v for k, v in values.items() if k in COMMIT_FIELDS})
    fingerprint = budget_services.AllowanceRequest.fingerprint_of(json.loads(json.dumps(body, default=str)))
    tenant = reservation.caller.policy.tenant
    hold = reservation.decision.hold
    assert hold is not None
    try:
        budget_services.hold_commit(tenant=tenant, hold_id=hold.pk, api_key=reservation.caller.key, data=data,
                                    fingerprint=fingerprint, policy=reservation.caller.policy)
    except budget_services.AllowanceError as exc:
        if exc.code != "unknown_model" or not data.model:
            raise
        # A model id the catalog does not price yet (a new dated snapshot): the call happened,
        # so it is charged as the model the hold was granted for.
        metadata["gateway"]["reported_model"] = data.model
        budget_services.hold_commit(
            tenant=tenant, hold_id=hold.pk, api_key=reservation.caller.key,
            data=dataclasses.replace(data, model=""), fingerprint=fingerprint, policy=reservation.caller.policy,
        )
