"""Provider sync: Anthropic's Usage and Cost Admin API, and reconciliation against the ledger."""
