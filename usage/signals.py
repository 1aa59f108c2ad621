"""What the ledger announces, for the layers above it to act on.

The ledger never imports budgets or alerting; it says what it recorded and whoever cares
listens (``governance.notify.alerts`` raises ``unpriced_usage`` from ``usage_recorded``).
"""

from django.dispatch import Signal

# Sent by usage.services.usage_announce, inside the transaction that recorded the rows.
# Arguments: tenant (Tenant), events (list[UsageEvent], each freshly recorded).
usage_recorded = Signal()
