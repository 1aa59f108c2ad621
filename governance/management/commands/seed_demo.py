"""``manage.py seed_demo``: an idempotent demo tenant with weeks of realistic usage.

Four features, each pulling a different lever: an interactive Sonnet assistant with
prompt caching, a high-volume Haiku classifier (moved off Sonnet a month ago), an Opus
code reviewer close to its weekly budget, and a nightly job on the batch tier. Usage
goes through the ledger service, so rollups and budget windows are exactly what real
traffic would have produced. Running it again only adds what is missing (each call has
a deterministic request id) and resets the demo password.
"""

from __future__ import annotations

import hmac
import random
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import Sum
from django.db.models.functions import TruncDate, TruncHour
from django.utils import timezone

from budgets import alerting
from budgets import features as feature_services
from budgets import services as budget_services
from budgets.models import Budget, Enforcement, HoldState, Period, Scope
from budgets.services import usage_report
from governance import services
from governance.audit import Actor
from governance.keys import hash_secret
from governance.models import ApiKey, Feature, KeyRole, Membership, Role, Tenant
from governance.notify import services as notify_services
from governance.notify.models import AlertChannel, ChannelKind
from usage.models import NANO, ServiceTier, UsageEvent, UsageRollup
from usage.pricing import TokenUsage, price_for
from usage.provider import services as provider_services
from usage.provider.models import (
    ConnectionStatus,
    ProviderConnection,
    ProviderCostBucket,
    ProviderUsageBucket,
)
from usage.services import UsageInput

SLUG = "demo"
OWNER = "demo@comptroller.local"
VIEWER = "viewer@comptroller.local"
# A fixed, printed password: this is a local demo, and `make run` shows it on start.
PASSWORD = "comptroller-demo"
DAYS = 60
SEED = 20261124
# The Anthropic API key and workspace each demo feature calls with. The nightly digest's
# key is not mapped: its workspace is, so its bill can be reconciled too.
BATCH_WORKSPACE = "wrkspc_01DemoBatchJobs"
DEMO_IDS = {
    "support-assistant": ("apikey_01DemoSupportAssistant", ""),
    "ticket-classifier": ("apikey_01DemoTicketClassifier", ""),
    "code-review": ("apikey_01DemoCodeReview", ""),
    "nightly-digest": ("apikey_01DemoNightlyDigest", BATCH_WORKSPACE),
}
MAPPED_KEYS = {"apikey_01DemoSupportAssistant", "apikey_01DemoTicketClassifier", "apikey_01DemoCodeReview"}


@dataclass(frozen=True)
class FeatureSpec:
    key: str
    name: str
    description: str
    default_model: str
    fallback_models: tuple[str, ...]
    max_tokens_cap: int
    interactive: bool
    weekday_calls: int
    weekend_calls: int


FEATURES = (
    FeatureSpec(
        "support-assistant", "Support assistant",
        "Answers customer questions in the help widget; a long cached system prompt and streamed replies.",
        "claude-sonnet-5-5", ("claude-haiku-5-5",), 2048, True, 120, 40,
    ),
    FeatureSpec(
        "ticket-classifier", "Ticket classifier",
        "Tags and routes every incoming ticket; tiny outputs, very high volume.",
        "claude-haiku-5-5", (), 256, True, 180, 80,
    ),
    FeatureSpec(
        "code-review", "Code review",
        "Reviews pull requests with Opus (the hardest ones with Fable); long diffs in, detailed comments out.",
        "claude-opus-5-5", ("claude-sonnet-5-5",), 4096, True, 28, 3,
    ),
    FeatureSpec(
        "nightly-digest", "Nightly digest",
        "Summarises the day's tickets for the morning report; nobody waits for it, so it runs on the batch tier.",
        "claude-sonnet-5-5", (), 2048, False, 50, 50,
    ),
)


class Command(BaseCommand):
    help = "Create or refresh the demo tenant (owner login in var/demo-login.txt) with ~60 days of usage."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=DAYS, help="Days of usage to generate (default 60)")

    def handle(self, *args, days: int, **options):
        started = time.monotonic()
        self._broker_folders()
        tenant, owner = self._tenant_and_users()
        actor = Actor(user=owner)
        features = self._features(tenant, actor)
        self._budgets(tenant, actor, features)
        self._channel(tenant, actor)
        secret = self._key(tenant, actor)
        calls = self._usage(tenant, features, days=days)
        self._live_holds(tenant, features)
        self._provider(tenant, actor)
        raised = alerting.budgets_evaluate()
        login = f"{OWNER} / {PASSWORD}"
        path = Path(settings.BASE_DIR) / "var" / "demo-login.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(login + "\n")
        self.stdout.write(
            f"Demo tenant '{tenant.slug}': {calls} new calls recorded, {raised} alerts raised "
            f"in {time.monotonic() - started:.1f}s."
        )
        self.stdout.write(f"Demo service API key: {secret}")
        self.stdout.write(f"Viewer login: {VIEWER} / {PASSWORD}")
        self.stdout.write(f"Owner login: {login}")

    @staticmethod
    def _broker_folders() -> None:
        """Create the file broker's folders: `make run` seeds before the worker first starts."""
        options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            for key in ("data_folder_in", "data_folder_out", "processed_folder"):
                if options.get(key):
                    Path(options[key]).mkdir(parents=True, exist_ok=True)

    # --- tenancy -----------------------------------------------------------------------

    @transaction.atomic
    def _tenant_and_users(self):
        tenant = Tenant.objects.filter(slug=SLUG).first()
        if tenant is None:
            tenant = Tenant(slug=SLUG, name="Demo Co", timezone="Europe/Berlin")
            tenant.full_clean()
            tenant.save()
        User = get_user_model()
        users = {}
        for username, role in ((OWNER, Role.OWNER), (VIEWER, Role.VIEWER)):
            user = User.objects.filter(username=username).first() or User(username=username, email=username)
            user.set_password(PASSWORD)
            user.save()
            Membership.objects.get_or_create(user=user, tenant=tenant, defaults={"role": role})
            users[role] = user
        return tenant, users[Role.OWNER]

    def _features(self, tenant: Tenant, actor: Actor) -> dict[str, Feature]:
        features = {}
        for spec in FEATURES:
            feature = Feature.objects.filter(tenant=tenant, key=spec.key).first()
            if feature is None:
                feature = feature_services.feature_create(
                    tenant=tenant, actor=actor, key=spec.key, name=spec.name, description=spec.description,
                    default_model=spec.default_model, fallback_models=list(spec.fallback_models),
                    max_tokens_cap=spec.max_tokens_cap, interactive=spec.interactive,
                    fail_mode="open" if spec.interactive else "closed",
                )
            features[spec.key] = feature
        return features

    def _budgets(self, tenant: Tenant, actor: Actor, features: dict[str, Feature]) -> None:
        wanted: list[dict[str, Any]] = [
            dict(name="Company monthly", scope=Scope.TENANT, period=Period.MONTH, limit_nano=200 * NANO,
                 enforcement=Enforcement.BLOCK, thresholds=[50, 80, 100]),
            dict(name="Support assistant monthly", scope=Scope.FEATURE, feature=features["support-assistant"],
                 period=Period.MONTH, limit_nano=50 * NANO, enforcement=Enforcement.DOWNGRADE,
                 thresholds=[50, 80, 100]),
            dict(name="Code review weekly", scope=Scope.FEATURE, feature=features["code-review"],
                 period=Period.WEEK, limit_nano=22 * NANO, enforcement=Enforcement.BLOCK,
                 thresholds=[50, 80, 90, 100]),
            dict(name="Classifier daily tokens", scope=Scope.FEATURE, feature=features["ticket-classifier"],
                 period=Period.DAY, limit_tokens=350_000, enforcement=Enforcement.ALERT, thresholds=[80, 100]),
            dict(name="Opus spend cap", scope=Scope.TENANT, model_families=["opus"], period=Period.MONTH,
                 limit_nano=85 * NANO, enforcement=Enforcement.DOWNGRADE, thresholds=[50, 80, 100]),
            dict(name="Nightly run ceiling", scope=Scope.RUN, feature=features["nightly-digest"],
                 period=Period.TOTAL, limit_nano=2 * NANO, enforcement=Enforcement.BLOCK, thresholds=[80, 100]),
        ]
        existing = set(Budget.objects.filter(tenant=tenant).values_list("name", flat=True))
        for fields in wanted:
            if fields["name"] not in existing:
                budget_services.budget_create(tenant=tenant, actor=actor, **fields)

    def _channel(self, tenant: Tenant, actor: Actor) -> None:
        if not AlertChannel.objects.filter(tenant=tenant, name="Ops email").exists():
            notify_services.channel_create(
                tenant=tenant, actor=actor, name="Ops email", kind=ChannelKind.EMAIL,
                email_addresses=["ops@demo.comptroller.local", "finance@demo.comptroller.local"],
            )

    def _key(self, tenant: Tenant, actor: Actor) -> str:
        """Return the demo service key, kept in var/demo-service-key.txt for `make run`'s banner.

        A key's secret is shown once and only its hash is stored, so the file is the only copy;
        when it is missing or its key no longer works, the old key is revoked and a new one made.
        """
        path = Path(settings.BASE_DIR) / "var" / "demo-service-key.txt"
        current = ApiKey.objects.filter(tenant=tenant, name="Demo services", revoked_at__isnull=True)
        if path.exists():
            secret = path.read_text().strip()
            if any(hmac.compare_digest(k.secret_hash, hash_secret(secret)) for k in current):
                return secret
        for stale in current:
            services.api_key_revoke(key=stale, actor=actor)
        _, secret = services.api_key_create(tenant=tenant, actor=actor, name="Demo services", role=KeyRole.SERVICE)
        if not ApiKey.objects.filter(tenant=tenant, name="Terraform (admin)").exists():
            services.api_key_create(tenant=tenant, actor=actor, name="Terraform (admin)", role=KeyRole.ADMIN)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n")
        return secret

    # --- usage ---------------------------------------------------------------------------

    def _usage(self, tenant: Tenant, features: dict[str, Feature], *, days: int) -> int:
        now = timezone.now()
        today = now.astimezone(tenant.tz).date()
        done = set(
            UsageRollup.objects.filter(tenant=tenant, day__gte=today - timedelta(days=days))
            .values_list("feature_id", "day").distinct()
        )
        recorded = 0
        for offset in range(days - 1, -1, -1):
            day = today - timedelta(days=offset)
            for spec in FEATURES:
                feature = features[spec.key]
                # Past days are complete once written; today keeps filling up as time passes.
                if day != today and (feature.pk, day) in done:
                    continue
                items = [i for i in self._day_calls(tenant, spec, feature, day, today, days) if i.occurred_at is not None and i.occurred_at <= now]
                if items:
                    results = usage_report(tenant=tenant, api_key=None, items=items)
                    recorded += sum(1 for r in results if r.created)
        return recorded

    def _day_calls(self, tenant: Tenant, spec: FeatureSpec, feature: Feature, day: date, today: date,
                   days: int) -> list[UsageInput]:
        rng = random.Random(f"{SEED}:{spec.key}:{day.isoformat()}")
        weekend = day.weekday() >= 5
        # Growth: traffic rises about 30 % over the period, plus day-to-day noise.
        age = (today - day).days
        growth = 1 + 0.3 * (1 - age / max(days, 1))
        base = spec.weekend_calls if weekend else spec.weekday_calls
        count = max(1, round(base * growth * rng.uniform(0.85, 1.15)))
        make = getattr(self, "_call_" + spec.key.replace("-", "_"))
        calls = []
        for n in range(count):
            at = self._moment(rng, tenant, day, spec)
            item = make(rng, feature, age)
            item.occurred_at = at
            item.request_id = f"demo-{spec.key}-{day:%Y%m%d}-{n:05d}"
            if not spec.interactive:
                item.run_id = f"nightly-{day:%Y-%m-%d}"  # one run per night, each under the run budget
            calls.append(item)
        return calls

    @staticmethod
    def _moment(rng: random.Random, tenant: Tenant, day: date, spec: FeatureSpec) -> datetime:
        if not spec.interactive:
            hour, minute = 2, rng.randint(0, 59)  # the nightly job runs at 02:00 local time
        elif rng.random() < 0.8:
            hour, minute = min(int(rng.gauss(13, 2.6)), 23), rng.randint(0, 59)  # office hours
        else:
            hour, minute = rng.randint(0, 23), rng.randint(0, 59)
        hour = max(hour, 0)
        local = datetime(day.year, day.month, day.day, hour, minute, rng.randint(0, 59), tzinfo=tenant.tz)
        return local.astimezone(UTC)

    @staticmethod
    def _call_support_assistant(rng: random.Random, feature: Feature, age: int) -> UsageInput:
        # A 6,000-token system prompt, cached: mostly reads, a write when the cache went cold.
        cold = rng.random() < 0.06
        model = "claude-haiku-5-5" if rng.random() < 0.08 else "claude-sonnet-5-5"
        output = min(int(rng.lognormvariate(5.8, 0.6)), 2048)
        latency = int(400 + output * rng.uniform(9, 14))
        return UsageInput(
            feature=feature, model=model,
            usage=TokenUsage(
                input_tokens=int(rng.uniform(300, 1800)), output_tokens=output,
                cache_write_5m_tokens=6000 if cold else 0, cache_read_tokens=0 if cold else 6000,
            ),
            stop_reason="max_tokens" if output >= 2048 else "end_turn", max_tokens=2048,
            latency_ms=latency, ttft_ms=int(rng.uniform(280, 900)), streamed=True,
        )

    @staticmethod
    def _call_ticket_classifier(rng: random.Random, feature: Feature, age: int) -> UsageInput:
        # The classifier ran on Sonnet until it moved to Haiku 35 days ago (the model lever, pulled).
        model = "claude-sonnet-5-5" if age > 35 else "claude-haiku-5-5"
        return UsageInput(
            feature=feature, model=model,
            # The routing instructions are a cached prefix; each ticket is a few hundred tokens.
            usage=TokenUsage(input_tokens=int(rng.uniform(200, 700)), cache_read_tokens=1500,
                             output_tokens=int(rng.uniform(8, 40))),
            stop_reason="end_turn", max_tokens=256, latency_ms=int(rng.uniform(250, 900)),
            ttft_ms=None, streamed=False,
        )

    @staticmethod
    def _call_code_review(rng: random.Random, feature: Feature, age: int) -> UsageInput:
        output = min(int(rng.lognormvariate(7.3, 0.5)), 4096)
        latency = int(2000 + output * rng.uniform(18, 30))
        hardest = rng.random() < 0.05
        # A few of the hardest reviews go to Fable: 5.2 from its launch on, 5.1 before it.
        fable_52_from = price_for("claude-fable-5-2").effective_from
        fable = "claude-fable-5-2" if timezone.now() - timedelta(days=age) >= fable_52_from else "claude-fable-5-1"
        return UsageInput(
            feature=feature, model=fable if hardest else "claude-opus-5-5",
            usage=TokenUsage(
                # The 4,000-token review guide goes to a 5-minute cache, gone by the next review
                # some 20 minutes later: every call pays the write premium (the caching lever).
                input_tokens=int(rng.uniform(5000, 30000)), output_tokens=output,
                cache_write_5m_tokens=4000,
            ),
            stop_reason="max_tokens" if output >= 4096 else "end_turn", max_tokens=4096,
            latency_ms=latency, ttft_ms=int(rng.uniform(900, 2600)), streamed=True,
        )

    @staticmethod
    def _call_nightly_digest(rng: random.Random, feature: Feature, age: int) -> UsageInput:
        # Moved to the batch tier three weeks ago; before that it ran synchronously.
        tier = "batch" if age <= 21 else "standard"
        return UsageInput(
            feature=feature, model="claude-sonnet-5-5", service_tier=tier,
            # The report template is a cached prefix; the day's tickets are not.
            usage=TokenUsage(input_tokens=int(rng.uniform(2500, 6000)), cache_read_tokens=6000,
                             output_tokens=int(rng.uniform(600, 1800))),
            stop_reason="end_turn", max_tokens=2048,
            latency_ms=None if tier == "batch" else int(rng.uniform(15000, 40000)), streamed=False,
        )

    @transaction.atomic
    def _provider(self, tenant: Tenant, actor: Actor) -> None:
        """Add a paused Anthropic connection whose last two weeks of reports were read.

        The demo has no real admin key, so the connection is disabled (the beat never
        calls Anthropic with it) and its reports are made up here from the ledger: the
        usage report hour by hour, each feature calling with its own API key (the nightly
        digest from its own workspace, by any key), and the cost report (the bill) per UTC
        day and workspace. Both equal the metered spend except two days ago, when someone
        used the Console directly with Sonnet 5.5 (no API key, the default workspace) for
        30 % of the day's Sonnet spend (about 8 % of the day, past the 5 % tolerance). That
        day is the one drift: both reports name it, the reconciliation page shows which model,
        and the per-feature table shows every mapped
        feature matching and the Console's spend unattributed.
        """
        if ProviderConnection.objects.filter(tenant=tenant).exists():
            return
        now = timezone.now()
        today = now.astimezone(tenant.tz).date()
        first = today - timedelta(days=14)
        connection = provider_services.provider_connection_save(
            tenant=tenant, actor=actor, admin_key="sk-ant-admin01-demo-not-a-real-key-0000", enabled=False,
        )
        start = datetime(first.year, first.month, first.day, tzinfo=tenant.tz).astimezone(UTC)
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        buckets = []
        hours = (
            UsageEvent.objects.filter(tenant=tenant, occurred_at__gte=start, occurred_at__lt=now)
            .annotate(hour=TruncHour("occurred_at", tzinfo=UTC))
            .values("hour", "feature__key", "model", "service_tier")
            .annotate(
                cost=Sum("cost_nano"), input=Sum("input_tokens"), output=Sum("output_tokens"),
                cache_read=Sum("cache_read_tokens"), cache_write=Sum("cache_write_5m_tokens"),
            )
        )
        for row in hours:
            api_key_id, workspace_id = DEMO_IDS[row["feature__key"]]
            buckets.append(ProviderUsageBucket(
                tenant=tenant, bucket_start=row["hour"], model=row["model"], canonical_model=row["model"],
                api_key_id=api_key_id, workspace_id=workspace_id, service_tier=row["service_tier"],
                uncached_input_tokens=row["input"], output_tokens=row["output"],
                cache_read_tokens=row["cache_read"], cache_write_5m_tokens=row["cache_write"],
                cost_nano=row["cost"], synced_at=now,
            ))
        console_day = today - timedelta(days=2)
        sonnet = UsageRollup.objects.filter(tenant=tenant, day=console_day, model__contains="sonnet").values(
            "model").annotate(
            cost=Sum("cost_nano"), input=Sum("input_tokens"), output=Sum("output_tokens"),
        )
        noon = datetime(console_day.year, console_day.month, console_day.day, 12, tzinfo=tenant.tz).astimezone(UTC)
        for used in sonnet:
            buckets.append(ProviderUsageBucket(
                tenant=tenant, bucket_start=noon, model=used["model"], canonical_model=used["model"],
                service_tier=ServiceTier.STANDARD, uncached_input_tokens=used["input"] * 30 // 100,
                output_tokens=used["output"] * 30 // 100, cost_nano=used["cost"] * 30 // 100, synced_at=now,
            ))
        ProviderUsageBucket.objects.bulk_create(buckets)
        # Saving the mapping attributes the stored buckets, as it does for a real sync's.
        provider_services.provider_mapping_save(connection=connection, actor=actor, feature_mapping={
            "api_keys": {key: feature for feature, (key, _) in DEMO_IDS.items() if key in MAPPED_KEYS},
            "workspaces": {BATCH_WORKSPACE: "nightly-digest"},
        })
        # The bill: per UTC day, workspace, model and tier (the cost report has no API key).
        lines: dict[tuple[date, str, str, str], int] = {}
        events = UsageEvent.objects.filter(
            tenant=tenant, occurred_at__gte=datetime.combine(first, dtime(), tzinfo=UTC),
            occurred_at__lt=datetime.combine(today, dtime(), tzinfo=UTC),
        ).exclude(service_tier=ServiceTier.PRIORITY).annotate(utc_day=TruncDate("occurred_at", tzinfo=UTC))
        for line in events.values("utc_day", "feature__key", "model", "service_tier").annotate(cost=Sum("cost_nano")):
            key = (line["utc_day"], DEMO_IDS[line["feature__key"]][1], line["model"], line["service_tier"])
            lines[key] = lines.get(key, 0) + line["cost"]
        console: dict[str, int] = {}
        for (day, _, model, _), cost in lines.items():
            if day == console_day and "sonnet" in model:
                console[model] = console.get(model, 0) + cost
        for model, cost in console.items():
            key = (console_day, "", model, ServiceTier.STANDARD)
            lines[key] = lines.get(key, 0) + cost * 30 // 100
        bill = []
        for (day, workspace_id, model, tier), amount in sorted(lines.items()):
            name = price_for(model).display_name
            bill.append(ProviderCostBucket(
                tenant=tenant, bucket_start=datetime.combine(day, dtime(), tzinfo=UTC), day=day,
                workspace_id=workspace_id, description=f"{name} Usage ({tier})", cost_type="tokens",
                model=model, canonical_model=model, service_tier=tier,
                amount_cents=str(Decimal(amount) / 10_000_000), amount_nano=amount, synced_at=now,
            ))
        ProviderCostBucket.objects.bulk_create(bill)
        ProviderConnection.objects.filter(pk=connection.pk).update(
            status=ConnectionStatus.OK, usage_synced_from=start, usage_synced_until=end,
            usage_synced_at=now - timedelta(minutes=4), last_attempt_at=now - timedelta(minutes=4),
            cost_synced_from=datetime.combine(first, dtime(), tzinfo=UTC),
            cost_synced_until=datetime.combine(today, dtime(), tzinfo=UTC), cost_synced_at=now - timedelta(minutes=40),
        )
        provider_services.reconciliation_run(tenant=tenant, start=first, end=today - timedelta(days=1), now=now)

    def _live_holds(self, tenant: Tenant, features: dict[str, Feature]) -> None:
        """Keep a few calls in flight, so the 'held' part of the bars has something to show."""
        from budgets.models import Hold

        today = timezone.now().astimezone(tenant.tz).date()
        for n, (key, model, input_tokens, max_tokens) in enumerate((
            ("support-assistant", "claude-sonnet-5-5", 8000, 2048),
            ("code-review", "claude-opus-5-5", 60000, 4096),
            ("code-review", "claude-opus-5-5", 90000, 4096),
        )):
            idem = f"demo-live-{today:%Y%m%d}-{n}"
            if Hold.objects.filter(tenant=tenant, idempotency_key=idem, state=HoldState.HELD).exists():
                continue
            budget_services.allowance_request(
                tenant=tenant, api_key=None,
                req=budget_services.AllowanceRequest(
                    feature=key, model=model, input_tokens=input_tokens, max_tokens=max_tokens,
                    idempotency_key=idem, ttl_seconds=6 * 3600,
                ),
            )
