"""Input serializers for usage as services report it (commit bodies and usage reports)."""

from __future__ import annotations

import json
from datetime import timedelta

from django.utils import timezone
from rest_framework import serializers

from governance.api.fields import EARLIEST_TIME, StrictSerializer, token_count
from usage.models import ServiceTier
from usage.pricing import TokenUsage

METADATA_LIMIT = 4096
MAX_MS = 86_400_000


METADATA_DEPTH = 32
# A reporter's clock may run a little fast; usage further ahead has not happened yet, and
# would be charged to a window the current one never sees.
MAX_CLOCK_AHEAD = timedelta(minutes=5)


def validate_occurred_at(value):
    if value < EARLIEST_TIME:
        raise serializers.ValidationError(f"Must not be before {EARLIEST_TIME:%Y-%m-%dT%H:%M:%SZ}.")
    now = timezone.now()
    if value > now + MAX_CLOCK_AHEAD:
        raise serializers.ValidationError(
            f"Must not be more than 5 minutes ahead of the server clock (now {now:%Y-%m-%dT%H:%M:%SZ})."
        )
    return value


def validate_metadata(value):
    if not isinstance(value, dict):
        raise serializers.ValidationError("Must be a JSON object.")
    problem = _json_problem(value)
    if problem:
        raise serializers.ValidationError(problem)
    if len(json.dumps(value, separators=(",", ":"))) > METADATA_LIMIT:
        raise serializers.ValidationError("Must be at most 4 KiB as JSON.")
    return value


def _json_problem(value) -> str | None:
    """Return what makes a JSON value unfit to store, walking it without recursion."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > METADATA_DEPTH:
            return f"Must be nested at most {METADATA_DEPTH} levels deep."
        # NUL and lone surrogates never get here: the API's JSON parser refuses them.
        if isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return None


class CacheCreationInput(serializers.Serializer):
    ephemeral_5m_input_tokens = token_count(required=False, allow_null=True)
    ephemeral_1h_input_tokens = token_count(required=False, allow_null=True)


class ServerToolUseInput(serializers.Serializer):
    web_search_requests = token_count(required=False, allow_null=True)


class AnthropicUsageInput(serializers.Serializer):
    """Anthropic's usage object as the Messages API returns it; unknown keys are ignored."""

    input_tokens = token_count(help_text="Uncached input tokens")
    output_tokens = token_count()
    cache_creation_input_tokens = token_count(required=False, allow_null=True)
    cache_read_input_tokens = token_count(required=False, allow_null=True)
    cache_creation = CacheCreationInput(required=False, allow_null=True)
    server_tool_use = ServerToolUseInput(required=False, allow_null=True)
    service_tier = serializers.ChoiceField(choices=ServiceTier.choices, required=False, allow_null=True)
    inference_geo = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=20)
    # Free text, not a choice: a value Anthropic adds later must not make spent money a 400.
    speed = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=20)

    def to_token_usage(self, data) -> TokenUsage:
        return TokenUsage.from_anthropic(data)


class CommitInput(StrictSerializer):
    model = serializers.CharField(required=False, max_length=100)
    usage = AnthropicUsageInput()
    request_id = serializers.CharField(required=False, allow_blank=True, max_length=255)
    stop_reason = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=40)
    latency_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_MS)
    ttft_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_MS)
    streamed = serializers.BooleanField(required=False, allow_null=True)
    metadata = serializers.JSONField(required=False, validators=[validate_metadata])


class UsageEventInput(CommitInput):
    feature = serializers.CharField(max_length=63)
    model = serializers.CharField(max_length=100)
    request_id = serializers.CharField(max_length=255)
    run_id = serializers.CharField(required=False, allow_blank=True, max_length=200)
    occurred_at = serializers.DateTimeField(
        required=False, validators=[validate_occurred_at],
        help_text="When the call happened (default now): from 2023-01-01 to 5 minutes ahead of the server clock",
    )
