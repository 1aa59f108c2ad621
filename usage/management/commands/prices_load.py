"""Load a price catalog file into the price table: `manage.py prices_load [FILE] [--replace] [--dry-run]`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from usage.catalog import DEFAULT_CATALOG, CatalogError, catalog_load, catalog_read


class Command(BaseCommand):
    help = (
        "Load a price catalog (default: the one shipped in usage/catalog/prices.toml). Idempotent: "
        "a new dated entry adds a row, so usage is priced as it was when it happened."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", default=str(DEFAULT_CATALOG), help="Catalog TOML file")
        parser.add_argument(
            "--replace", action="store_true",
            help="Overwrite the rates of entries already loaded with the same date (a correction).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would change; write nothing.")

    def handle(self, *args, **options):
        try:
            catalog = catalog_read(options["file"])
        except (OSError, CatalogError) as exc:
            raise CommandError(str(exc)) from exc
        with transaction.atomic():
            result = catalog_load(catalog, replace=options["replace"])
            for label in result.created:
                self.stdout.write(f"added    {label}")
            for label in result.updated:
                self.stdout.write(f"updated  {label}")
            for label in result.conflicts:
                self.stderr.write(
                    f"refused  {label}: its rates differ from the row loaded for that date. Give the "
                    "change a new effective_from (a price change), or pass --replace (a correction)."
                )
            if options["dry_run"]:
                transaction.set_rollback(True)
        self.stdout.write(
            f"catalog {catalog.version}: {len(result.created)} added, {len(result.updated)} updated, "
            f"{result.unchanged} unchanged, {len(result.conflicts)} refused"
            + (" (dry run, nothing written)" if options["dry_run"] else "")
        )
        if result.conflicts:
            raise CommandError(f"{len(result.conflicts)} entries refused.")
