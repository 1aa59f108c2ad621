"""Web UI views: thin, one per page; reads through selectors, writes through services."""
