"""Read a date range of the provider's usage and cost reports, then reconcile it."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.core.management.base import BaseCommand, CommandError

from usage.provider import selectors, services


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD).") from exc


class Command(BaseCommand):
    help = (
        "Backfill a tenant's Anthropic usage and cost buckets for the UTC days START..END (inclusive), "
        "replacing what is stored for them, then reconcile those days."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Tenant slug")
        parser.add_argument("--start", required=True, help="First UTC day, YYYY-MM-DD")
        parser.add_argument("--end", help="Last UTC day, YYYY-MM-DD (default: the start day)")
        parser.add_argument("--only", choices=["usage", "cost"], help="Sync one report only")
        parser.add_argument("--no-reconcile", action="store_true", help="Skip reconciliation")

    def handle(self, *args, **options):
        from governance.models import Tenant

        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {options['tenant']!r}.")
        connection = selectors.connection_get(tenant=tenant)
        if connection is None:
            raise CommandError(f"Tenant {tenant.slug!r} has no provider connection.")
        first = _day(options["start"])
        last = _day(options["end"]) if options["end"] else first
        if last < first:
            raise CommandError("--end is before --start.")
        start = datetime.combine(first, time(), tzinfo=UTC)
        end = datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)

        failed = False
        for report, sync in (("usage", services.provider_usage_sync), ("cost", services.provider_cost_sync)):
            if options["only"] not in (None, report):
                continue
            result = sync(connection=connection, start=start, end=end)
            if result.ok:
                self.stdout.write(
                    f"{report}: {result.buckets} buckets, {result.rows} rows stored for {first}..{last}"
                )
            else:
                failed = True
                self.stderr.write(f"{report}: failed: {result.error}")
        if not options["no_reconcile"]:
            days = services.reconciliation_run(tenant=tenant, start=first, end=last)
            drifting = [d.day.isoformat() for d in days if d.drifting]
            self.stdout.write(
                f"reconciled {len(days)} days" + (f"; drifting: {', '.join(drifting)}" if drifting else "")
            )
        if failed:
            raise CommandError("The sync failed; the error is recorded on the connection.")
