"""The two calls made around every model call cost the database what docs/design.md says, on the wire.

The allowance is one autocommitted statement; the commit is one statement in the process that
granted its hold, and the unlocked read of its hold and one statement elsewhere; a commit that crosses no threshold asks nothing more for the threshold check.
Counted as round trips on the connection (governance.postgresql.wire), so a query added on the
hot path, a BEGIN/COMMIT pair, a savepoint or a health check shows up here, without timing anything.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from budgets import settle
from budgets.models import BudgetWindow, Hold
from budgets.services import holds_expire
from governance.api.ids import parse_public_id
from governance.postgresql.wire import round_trips
from tests.conftest import HOT_ASK, HOT_USAGE, post_json
from usage.models import UsageEvent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ASK, USAGE, post = HOT_ASK, HOT_USAGE, post_json


def test_an_allowance_is_one_round_trip(warm_api):
    with round_trips() as trips:
        response = post(warm_api, "/api/v1/allowances", ASK)
    assert response.status_code == 201
    assert trips.count == 1, trips.sent


def test_a_commit_in_the_process_that_granted_the_hold_is_one_statement(warm_api):
    hold = post(warm_api, "/api/v1/allowances", ASK).json()["id"]
    with round_trips() as trips:
        response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 200
    assert response.json()["state"] == "committed"
    assert trips.count == 1, trips.sent


def test_a_commit_elsewhere_is_the_holds_read_and_one_statement(warm_api):
    hold = post(warm_api, "/api/v1/allowances", ASK).json()["id"]
    settle._granted.clear()  # as in another process
    with round_trips() as trips:
        response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 200
    assert response.json()["state"] == "committed"
    assert trips.count == 2, trips.sent


def _granted_here_moved_on_elsewhere(api, move) -> str:
    """Grant a hold here, then let ``move(hold_id)`` act on it as another process would."""
    hold = post(api, "/api/v1/allowances", ASK).json()["id"]
    kept = dict(settle._granted)
    settle._granted.clear()
    move(hold)
    settle._granted.update(kept)  # this process still has the hold as it granted it
    return hold


def _reserved(tenant) -> list[int]:
    return sorted(BudgetWindow.objects.filter(budget__tenant=tenant).values_list("reserved_nano", flat=True))


def test_a_hold_released_elsewhere_is_not_committed_from_this_process(warm_api, tenant):
    hold = _granted_here_moved_on_elsewhere(
        warm_api, lambda h: post(warm_api, f"/api/v1/allowances/{h}/release", {}))
    response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 409 and "released" in response.json()["error"]["message"]
    assert _reserved(tenant) == [0, 0]


def test_a_hold_committed_elsewhere_replays_or_conflicts_here(warm_api, tenant):
    first: dict = {}
    hold = _granted_here_moved_on_elsewhere(
        warm_api, lambda h: first.update(post(warm_api, f"/api/v1/allowances/{h}/commit", USAGE).json()))
    again = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert again.status_code == 200 and again.json()["usage_event_id"] == first["usage_event_id"]
    hold = _granted_here_moved_on_elsewhere(
        warm_api, lambda h: post(warm_api, f"/api/v1/allowances/{h}/commit", USAGE))
    other = post(warm_api, f"/api/v1/allowances/{hold}/commit", {"usage": {"input_tokens": 100, "output_tokens": 21}})
    assert other.status_code == 409
    assert UsageEvent.objects.filter(tenant=tenant).count() == 4  # warm_api's two, and one for each hold
    assert _reserved(tenant) == [0, 0]


def test_a_hold_expired_elsewhere_is_committed_late_from_this_process(warm_api, tenant):
    def expire(hold_id: str) -> None:
        Hold.objects.filter(pk=parse_public_id(hold_id, "hold")).update(expires_at=timezone.now() - timedelta(seconds=1))
        assert holds_expire() == 1

    hold = _granted_here_moved_on_elsewhere(warm_api, expire)
    response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 200
    assert response.json()["late"] is True and response.json()["state"] == "committed"
    assert _reserved(tenant) == [0, 0]  # the reservation came off once, at expiry



def test_an_allowance_with_a_new_idempotency_key_is_one_round_trip(warm_api):
    """The client sends a key with every allowance; a new one is found new by the insert, not by a read first."""
    with round_trips() as trips:
        response = post(warm_api, "/api/v1/allowances", {**ASK, "idempotency_key": "cc_new_key_1"})
    assert response.status_code == 201
    assert trips.count == 1, trips.sent


def test_a_repeated_idempotency_key_replays_the_first_answer(warm_api):
    first = post(warm_api, "/api/v1/allowances", {**ASK, "idempotency_key": "cc_repeat"})
    again = post(warm_api, "/api/v1/allowances", {**ASK, "idempotency_key": "cc_repeat"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    other = post(warm_api, "/api/v1/allowances", {**ASK, "max_tokens": 51, "idempotency_key": "cc_repeat"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"



def test_a_release_is_one_statement(warm_api):
    first = post(warm_api, "/api/v1/allowances", ASK).json()["id"]
    assert post(warm_api, f"/api/v1/allowances/{first}/release", {}).status_code == 200  # prepares the statement
    hold = post(warm_api, "/api/v1/allowances", ASK).json()["id"]
    with round_trips() as trips:
        response = post(warm_api, f"/api/v1/allowances/{hold}/release", {})
    assert response.status_code == 200 and response.json()["state"] == "released"
    assert trips.count == 1, trips.sent
    again = post(warm_api, f"/api/v1/allowances/{hold}/release", {})
    assert again.status_code == 200 and again.json()["state"] == "released"
