"""Granted holds shared by the web processes of one host, so a commit need not read its hold.

Everything a commit reads of a hold is fixed when the hold is granted, except its state,
which the settle statement checks itself (``budgets.settle``). Each process keeps the
holds it granted (``settle.hold_granted``), but under N sync workers a commit reaches the
process that granted its hold once in N. The shelf is the same memo in memory every
worker of a gunicorn master shares: an anonymous shared mapping the master makes before
it forks (``gunicorn.conf.py``), one region per worker, which only that worker writes.

A region is a table of fixed-size slots, a hold's place in it given by its id (a newer
hold takes an older one's place: the commit then reads the hold, as without a shelf).
A slot holds a sequence number, the hold id, a checksum and the hold's column values
(plain ones: bytes, text, numbers, lists and dicts of them, as ``marshal`` writes them). The writer makes the sequence odd, writes,
and makes it even again; a reader that sees it odd or changed, another id, or a checksum
that does not match its bytes has no hold from the shelf. Nothing is ever read from a
slot that is not checked whole, so a worker killed mid-write or a read racing a write
costs a database read, never a wrong hold.

No gunicorn master (the development server, the test suite) means no shelf, and every
call here does nothing. The gateway's workers have one too, though they commit their own
holds.
"""

from __future__ import annotations

import marshal
import mmap
import struct
import threading
import zlib
from typing import Any

SLOTS = 4096  # per region: about as many holds as one worker grants in the seconds a call takes
SLOT_BYTES = 1024  # a hold that takes more (a large metadata object) is not shelved
_HEADER = struct.Struct("<QI16sI")  # sequence, checksum, hold id, payload length
_PAYLOAD_MAX = SLOT_BYTES - _HEADER.size
_REGION_BYTES = SLOTS * SLOT_BYTES

_memory: mmap.mmap | None = None
_regions = 0
_own: int | None = None  # the region this process writes, once a worker
_writing = threading.Lock()  # one writer per region: a threaded worker's threads take turns


def create(regions: int) -> None:
    """Make the shared mapping (in the master, before it forks workers): ``regions`` regions."""
    global _memory, _regions, _own
    if _memory is not None:
        _memory.close()
    _regions = max(1, regions)
    # Anonymous and shared: the forked workers see the same pages; only touched pages cost memory.
    _memory = mmap.mmap(-1, _regions * _REGION_BYTES, flags=mmap.MAP_SHARED)
    _own = None


def region_free(taken: set[int]) -> int | None:
    """Return the lowest region no live worker writes (``taken``), or None when all are."""
    return next((r for r in range(_regions) if r not in taken), None) if _memory is not None else None


def attach(region: int | None) -> None:
    """Make this process (a worker just forked) the writer of ``region`` (None: it writes none)."""
    global _own
    _own = region if _memory is not None and region is not None and 0 <= region < _regions else None


def close() -> None:
    """Drop the shelf in this process (tests)."""
    global _memory, _regions, _own
    if _memory is not None:
        _memory.close()
    _memory, _regions, _own = None, 0, None


def active() -> bool:
    return _memory is not None


def _slot(region: int, key: bytes) -> int:
    return region * _REGION_BYTES + (int.from_bytes(key[:8], "little") % SLOTS) * SLOT_BYTES


def put(key: bytes, values: tuple[Any, ...]) -> bool:
    """Shelve a granted hold's column values (plain ones) by its id's 16 bytes in this worker's region; return whether it was."""
    memory, region = _memory, _own
    if memory is None or region is None:
        return False
    try:
        payload = marshal.dumps(values)
    except ValueError:  # a value marshal does not write
        return False
    if len(payload) > _PAYLOAD_MAX:
        return False
    at = _slot(region, key)
    checksum = zlib.crc32(payload, zlib.crc32(key))
    with _writing:
        sequence = _HEADER.unpack_from(memory, at)[0]
        writing = sequence + 1 if sequence % 2 == 0 else sequence + 2  # odd: being written
        struct.pack_into("<Q", memory, at, writing)
        memory[at + _HEADER.size:at + _HEADER.size + len(payload)] = payload
        struct.pack_into("<I16sI", memory, at + 8, checksum, key, len(payload))
        struct.pack_into("<Q", memory, at, writing + 1)
    return True


def get(key: bytes) -> tuple[Any, ...] | None:
    """Return the column values some worker of this host shelved by the id ``key``, or None."""
    memory = _memory
    if memory is None:
        return None
    for region in range(_regions):
        at = _slot(region, key)
        sequence, checksum, stored_id, length = _HEADER.unpack_from(memory, at)
        if sequence % 2 or stored_id != key or length > _PAYLOAD_MAX:
            continue
        payload = memory[at + _HEADER.size:at + _HEADER.size + length]
        if _HEADER.unpack_from(memory, at)[0] != sequence or zlib.crc32(payload, zlib.crc32(key)) != checksum:
            continue  # written meanwhile, or torn
        try:
            values = marshal.loads(payload)
        except (ValueError, EOFError, TypeError):  # a slot that is not a whole hold is no hold
            continue
        return values if isinstance(values, tuple) else None
    return None
