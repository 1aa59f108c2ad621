"""What the budget layer announces, for the alert layer above it to act on (``budgets.alerting``).

Sent inside the transaction that moved the counters; receivers defer their work with
``transaction.on_commit`` so an alert never describes spend that rolled back.
"""

from django.dispatch import Signal

# Arguments: windows (list[BudgetWindow]): windows just charged, budgets attached, counters as
# the sender's transaction left them.
windows_charged = Signal()

# Arguments: window_ids (list[int]): windows that just refused a call.
windows_refused = Signal()
