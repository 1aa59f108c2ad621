from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from governance.models import Tenant
from governance.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant (and its owner) and print a new admin API key on the last line."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--timezone", default="UTC", help="IANA time zone for period boundaries")
        parser.add_argument("--owner-email", help="Create (or reuse) this user as the tenant's owner; a new one gets a one-time password")

    def handle(self, *args, slug, name, timezone, owner_email, **options):
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"A tenant with slug '{slug}' exists.")
        try:
            tenant, password, secret = tenant_create(
                slug=slug, name=name, timezone_name=timezone, owner_email=owner_email
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        self.stdout.write(f"Created tenant {tenant.slug} ({tenant.name}, {tenant.timezone}).")
        if owner_email:
            if password:
                self.stdout.write(
                    f"Owner {owner_email} one-time password: {password}  (pass it on safely; "
                    "it must be replaced at the first sign-in)"
                )
            else:
                self.stdout.write(f"Existing user {owner_email} is now an owner.")
        self.stdout.write("Admin API key (shown once):")
        self.stdout.write(secret)
