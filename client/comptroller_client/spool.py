"""The durable spool: every commit, release and usage report waits here until Comptroller has it.

Entries are plain JSON objects, each with a ``spool_id``:

- ``{"kind": "usage", "event": {...}}`` — a ``POST /api/v1/usage`` event;
- ``{"kind": "commit", "hold_id": "...", "body": {...}}``;
- ``{"kind": "release", "hold_id": "..."}``.

Every entry is idempotent on the server (usage by ``request_id``, commits and
releases by hold), so delivering one twice — after a crash, or by two
processes — records it once.

On disk (``directory``) each process appends to a file of its own,
``<pid>-<random>.jsonl``, holding an exclusive ``flock`` on it while it
lives: one ``{"put": entry}`` line per entry and one ``{"ack": id}`` line
per delivered one. ``put`` writes before it returns (so the entry survives
the process being killed), ``sync`` fsyncs (the sender does so before
sending, so it survives the machine too). A file whose lock can be taken
belongs to a process that ended: the next process to start (or flush)
adopts its pending entries into its own file and deletes it. A torn line —
the process died mid-write — is skipped, counted in ``torn`` and logged.
When nothing is pending the file is truncated, so it stays small.

Entries the server refuses for good are moved to ``quarantine.jsonl`` with
the reason (logged at ERROR), never silently dropped. Without a directory
(``":memory:"``) the spool is a bounded in-process queue.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from datetime import datetime, timezone
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: only this process's own file is used
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("comptroller_client")

Entry = dict[str, Any]
MEMORY = ":memory:"
QUARANTINE = "quarantine.jsonl"
COMPACT_LINES = 10_000  # rewrite the file once it has this many lines
# Ids unique across processes without a call to the OS's random source per entry (slow on some VMs).
_PROCESS = f"{uuid.uuid4().hex[:16]}-"
_serial = itertools.count(1)


def _new_process() -> None:
    global _PROCESS, _serial
    _PROCESS, _serial = f"{uuid.uuid4().hex[:16]}-", itertools.count(1)


if hasattr(os, "register_at_fork"):  # a forked child (a pre-forking server) must not repeat its parent's keys
    os.register_at_fork(after_in_child=_new_process)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Spool:
    def __init__(self, directory: str | None = None, *, maxlen: int = 100_000) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self.directory = None if directory in (None, MEMORY) else str(directory)
        self.dropped = 0
        self.torn = 0
        self.quarantined = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._lines = 0
        self._dirty = False
        self.path: str | None = None
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            self.path = os.path.join(self.directory, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl")
            self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process
            if fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.adopt()

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return True

    # -- writing -------------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(_dumps(record) + "\n")
        self._file.flush()  # in the kernel now: survives this process being killed
        self._lines += 1
        self._dirty = True

    def put(self, entry: Entry) -> Entry:
        """Keep an entry until it is acknowledged; return it with its ``spool_id``."""
        entry.setdefault("spool_id", f"{_PROCESS}{next(_serial)}")
        with self._lock:
            while len(self._entries) >= self.maxlen:
                _, lost = self._entries.popitem(last=False)
                self.dropped += 1
                logger.error("comptroller spool full (%d); dropped the oldest report: %s", self.maxlen, lost)
                self._write({"ack": lost["spool_id"]})
            self._entries[entry["spool_id"]] = entry
            self._write({"put": entry})
        return entry

    def sync(self) -> None:
        """Make what was put durable against a crash of the machine (fsync)."""
        with self._lock:
            if self._file is None or not self._dirty:
                return
            self._dirty = False
            fd = os.dup(self._file.fileno())  # fsync outside the lock: put() never waits on the disk
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def peek(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def ack(self, entries: list[Entry]) -> None:
        """Forget entries that were delivered."""
        if not entries:
            return
        with self._lock:
            for entry in entries:
                if self._entries.pop(entry["spool_id"], None) is not None:
                    self._write({"ack": entry["spool_id"]})
            self._compact()

    remove = ack

    def quarantine(self, entry: Entry, reason: str, *, status: int | None = None) -> None:
        """Set an entry the server refuses for good aside, with the reason, and stop sending it."""
        self.quarantined += 1
        record = {"at": datetime.now(timezone.utc).isoformat(), "reason": reason, "status": status,
                  "entry": entry}
        logger.error("Comptroller refused a spooled report for good (%s); quarantined: %s", reason, entry)
        if self.directory is not None:
            with open(os.path.join(self.directory, QUARANTINE), "a", encoding="utf-8") as fh:
                fh.write(_dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self.ack([entry])

    def _compact(self) -> None:
        if self._file is None:
            return
        if not self._entries:
            self._file.seek(0)
            self._file.truncate()
            self._lines = 0
        elif self._lines >= COMPACT_LINES and len(self._entries) * 4 < self._lines:
            self._file.seek(0)
            self._file.truncate()
            self._lines = 0
            for entry in self._entries.values():
                self._write({"put": entry})
            os.fsync(self._file.fileno())
            self._dirty = False

    # -- other processes' files ------------------------------------------------------------

    def adopt(self) -> int:
        """Take over the pending entries of processes that ended; return how many."""
        if self.directory is None or fcntl is None:
            return 0
        adopted = 0
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if not name.endswith(".jsonl") or name == QUARANTINE or path == self.path:
                continue
            try:
                fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError:
                continue
            with fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # its process is alive
                entries = self._read(fh, path)
                for entry in entries:
                    if entry["spool_id"] not in self._entries:
                        self.put(entry)
                        adopted += 1
                self.sync()
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if adopted:
            logger.info("comptroller spool: adopted %d undelivered reports from ended processes", adopted)
        return adopted

    def _read(self, fh: IO[str], path: str) -> list[Entry]:
        pending: OrderedDict[str, Entry] = OrderedDict()
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                if "put" in record:
                    pending[record["put"]["spool_id"]] = record["put"]
                else:
                    pending.pop(record["ack"], None)
            except (ValueError, KeyError, TypeError):
                self.torn += 1
                logger.warning("comptroller spool %s: skipped torn line %d: %.200s", path, number, line)
        return list(pending.values())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                empty = not self._entries
                self._file.close()
                self._file = None
                if empty and self.path:
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
