"""comptroller-client: ask Comptroller before each Claude call and report after it."""

__version__ = "0.1.0"
