"""A bounded local spool for reports Comptroller could not take when they happened.

Entries are plain JSON objects:

- ``{"kind": "usage", "event": {...}}`` — a ``POST /api/v1/usage`` event (a
  fail-open call that never had a hold);
- ``{"kind": "commit", "hold_id": "...", "body": {...}}`` — a commit whose hold
  exists but whose report could not be delivered;
- ``{"kind": "release", "hold_id": "..."}``.

Every entry is idempotent on the server (usage by ``request_id``, commits and
releases by hold), so delivering one twice after a crash is harmless.

The spool is bounded: when it is full the oldest entry is dropped, counted in
``dropped`` and logged, so a long outage cannot exhaust the service's memory.
With ``path`` the entries are also kept in a JSON-lines file and survive a
restart of the process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from typing import Any

logger = logging.getLogger("comptroller_client")

Entry = dict[str, Any]


class Spool:
    def __init__(self, maxlen: int = 10_000, path: str | None = None) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self.path = path
        self.dropped = 0
        self._entries: deque[Entry] = deque()
        self._lock = threading.Lock()
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if line:
                        self._append(json.loads(line))

    def __len__(self) -> int:
        return len(self._entries)

    def _append(self, entry: Entry) -> None:
        if len(self._entries) >= self.maxlen:
            lost = self._entries.popleft()
            self.dropped += 1
            logger.error("comptroller spool full (%d); dropped the oldest report: %s", self.maxlen, lost)
        self._entries.append(entry)

    def put(self, entry: Entry) -> None:
        with self._lock:
            self._append(entry)
            if self.path:
                if len(self._entries) == self.maxlen:
                    self._rewrite()
                else:
                    with open(self.path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def peek(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)

    def remove(self, delivered: list[Entry]) -> None:
        """Forget entries that were delivered (or can never be: the server refused them)."""
        if not delivered:
            return
        gone = {id(e) for e in delivered}
        with self._lock:
            self._entries = deque(e for e in self._entries if id(e) not in gone)
            if self.path:
                self._rewrite()

    def _rewrite(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for entry in self._entries:
                fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        os.replace(tmp, self.path)  # type: ignore[arg-type]
