"""The granted-hold shelf the web processes of one host share (budgets/shelf.py).

A commit that reaches another worker than its allowance's takes the hold from the shelf,
one statement instead of a read and a statement; a slot that is not whole, or a hold that
moved on since it was granted, costs a read, never a wrong answer.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from budgets import settle, shelf
from budgets.models import Hold
from budgets.services import holds_expire
from governance.api.ids import parse_public_id
from governance.postgresql.wire import round_trips
from tests.conftest import HOT_ASK as ASK
from tests.conftest import HOT_USAGE as USAGE
from tests.conftest import post_json as post
from tests.test_hot_path_round_trips import _reserved
from usage.models import UsageEvent


@pytest.fixture
def shelved():
    """A shelf of three regions, this process the writer of region 0; gone afterwards."""
    shelf.create(regions=3)
    shelf.attach(0)
    yield shelf
    shelf.close()


def test_a_shelved_hold_is_found_by_its_id_only(shelved):
    hold_id = uuid.uuid4().bytes
    values = (hold_id, "claude-haiku-4-5", 12, {"k": ["v", None, True]}, 1764683000123456)
    assert shelf.put(hold_id, values)
    assert shelf.get(hold_id) == values
    assert shelf.get(uuid.uuid4().bytes) is None
    assert not shelf.put(hold_id, (hold_id, timezone.now()))  # only plain values (settle encodes the rest)
    assert shelf.get(hold_id) == values


def test_a_newer_hold_in_the_same_slot_takes_the_older_ones_place(shelved):
    older = uuid.uuid4().bytes
    newer = older[:8] + uuid.uuid4().bytes[8:]  # the same slot
    shelf.put(older, (older,))
    shelf.put(newer, (newer,))
    assert shelf.get(older) is None
    assert shelf.get(newer) == (newer,)


def test_a_hold_too_big_for_a_slot_is_not_shelved(shelved):
    hold_id = uuid.uuid4().bytes
    assert not shelf.put(hold_id, (hold_id, "x" * shelf.SLOT_BYTES))
    assert shelf.get(hold_id) is None


def test_a_torn_or_half_written_slot_is_no_hold(shelved):
    hold_id = uuid.uuid4().bytes
    shelf.put(hold_id, (hold_id, "claude-haiku-4-5"))
    at = shelf._slot(0, hold_id)
    memory = shelf._memory
    assert memory is not None
    memory[at + shelf._HEADER.size + 3] ^= 0xFF  # a byte of the payload, as a racing write leaves it
    assert shelf.get(hold_id) is None
    shelf.put(hold_id, (hold_id, "claude-haiku-4-5"))
    assert shelf.get(hold_id) is not None
    memory[at] |= 1  # the sequence odd: a write under way (or a worker killed in the middle of one)
    assert shelf.get(hold_id) is None
    shelf.put(hold_id, (hold_id, "again"))  # the next write makes it whole again
    assert shelf.get(hold_id) == (hold_id, "again")


def test_without_a_shelf_or_a_region_nothing_is_kept():
    hold_id = uuid.uuid4().bytes
    assert not shelf.active()
    assert not shelf.put(hold_id, (hold_id,))
    assert shelf.get(hold_id) is None
    shelf.create(regions=1)
    try:
        assert shelf.region_free({0}) is None
        assert not shelf.put(hold_id, (hold_id,))  # not attached: a process that writes no region
    finally:
        shelf.close()


def test_a_hold_shelved_by_a_forked_worker_is_read_by_another():
    shelf.create(regions=2)
    try:
        hold_id = uuid.uuid4().bytes
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker that granted the hold
            shelf.attach(1)
            ok = shelf.put(hold_id, (hold_id, "claude-sonnet-4-5", 2080000))
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)
        shelf.attach(0)
        assert shelf.get(hold_id) == (hold_id, "claude-sonnet-4-5", 2080000)
    finally:
        shelf.close()


# --- Through the API (the one-statement commit is PostgreSQL's) -----------------------------------


def _granted_by_another_worker(api) -> str:
    hold = post(api, "/api/v1/allowances", ASK).json()["id"]
    settle._granted.clear()  # this process does not have it; the shelf does
    return hold


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_commit_of_a_hold_another_worker_granted_is_one_statement(warm_api, shelved, tenant):
    hold = _granted_by_another_worker(warm_api)
    with round_trips() as trips:
        response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 200 and response.json()["state"] == "committed"
    assert trips.count == 1, trips.sent
    assert _reserved(tenant) == [0, 0]
    # The shelf still has it as granted: a repeat finds it moved on and reads it, then replays.
    again = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert again.status_code == 200 and again.json()["usage_event_id"] == response.json()["usage_event_id"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_torn_shelf_slot_costs_a_read(warm_api, shelved):
    hold = _granted_by_another_worker(warm_api)
    pk = parse_public_id(hold, "hold")
    memory = shelf._memory
    assert memory is not None
    memory[shelf._slot(0, pk.bytes) + shelf._HEADER.size + 5] ^= 0xFF
    with round_trips() as trips:
        response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 200
    assert trips.count == 2, trips.sent


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_shelved_hold_released_or_expired_since_is_answered_as_it_is(warm_api, shelved, tenant):
    released = _granted_by_another_worker(warm_api)
    assert post(warm_api, f"/api/v1/allowances/{released}/release", {}).status_code == 200
    settle._granted.clear()
    response = post(warm_api, f"/api/v1/allowances/{released}/commit", USAGE)
    assert response.status_code == 409 and "released" in response.json()["error"]["message"]

    expired = _granted_by_another_worker(warm_api)
    Hold.objects.filter(pk=parse_public_id(expired, "hold")).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert holds_expire() == 1
    response = post(warm_api, f"/api/v1/allowances/{expired}/commit", USAGE)
    assert response.status_code == 200 and response.json()["late"] is True
    assert _reserved(tenant) == [0, 0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_another_tenants_key_cannot_commit_a_shelved_hold(warm_api, shelved, outsider_api):
    hold = _granted_by_another_worker(warm_api)
    response = post(outsider_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 404
    assert not UsageEvent.objects.filter(hold__pk=parse_public_id(hold, "hold")).exists()
    assert post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE).status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_hold_from_the_shelf_is_the_hold_as_stored(warm_api, shelved):
    ask = {**ASK, "run_id": "run-7", "metadata": {"ticket": "T-1", "ünï": ["ç", 2]}, "idempotency_key": "k-1"}
    hold = post(warm_api, "/api/v1/allowances", ask).json()["id"]
    pk = parse_public_id(hold, "hold")
    shelved_hold, stored = settle._shelved(pk), Hold.objects.get(pk=pk)
    assert shelved_hold is not None
    names = [f.attname for f in Hold._meta.concrete_fields]
    assert [getattr(shelved_hold, n) for n in names] == [getattr(stored, n) for n in names]
    assert [type(getattr(shelved_hold, n)) for n in names] == [type(getattr(stored, n)) for n in names]


def test_a_slot_whose_header_and_body_come_from_two_writes_is_no_hold(shelved):
    """What racing writers (or a weakly ordered memory) could leave: one hold's header over another's body."""
    first = uuid.uuid4().bytes
    second = first[:8] + uuid.uuid4().bytes[8:]  # the same slot
    memory = shelf._memory
    assert memory is not None
    at = shelf._slot(0, first)
    shelf.put(first, (first, "model-aaaa", 1))
    header = memory[at:at + shelf._HEADER.size]
    shelf.put(second, (second, "model-bbbb", 2))  # as long as the first
    memory[at:at + shelf._HEADER.size] = header  # the sequence even, the first hold's id and checksum
    assert shelf.get(first) is None
    assert shelf.get(second) is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_hold_the_shelf_cannot_take_is_still_granted_and_committed(warm_api, shelved, monkeypatch, caplog):
    def broken(key, values):
        raise RuntimeError("the shelf is broken")

    monkeypatch.setattr(shelf, "put", broken)
    response = post(warm_api, "/api/v1/allowances", ASK)
    assert response.status_code == 201
    assert "not shelved" in caplog.text
    settle._granted.clear()
    assert post(warm_api, f"/api/v1/allowances/{response.json()['id']}/commit", USAGE).status_code == 200
