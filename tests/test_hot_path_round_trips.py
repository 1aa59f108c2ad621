"""The two calls made around every model call cost the database what docs/design.md says, on the wire.

The allowance is one autocommitted statement; the commit is the unlocked read of its hold and
one statement; a commit that crosses no threshold asks nothing more for the threshold check.
Counted as round trips on the connection (governance.postgresql.wire), so a query added on the
hot path, a BEGIN/COMMIT pair, a savepoint or a health check shows up here, without timing anything.
"""

from __future__ import annotations

import json

import pytest

from governance.postgresql.wire import round_trips
from tests.factories import BudgetFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ASK = {"feature": "support-bot", "model": "claude-sonnet-4-5", "input_tokens": 100, "max_tokens": 50}
USAGE = {"usage": {"input_tokens": 100, "output_tokens": 20}}


def post(client, path: str, body: dict):
    return client.generic("POST", path, json.dumps(body), content_type="application/json")


@pytest.fixture
def warm_api(api, tenant, feature):
    """A service key's client after one full cycle: the policy, window ids and prepared statements are in place."""
    BudgetFactory(tenant=tenant, scope="tenant", period="month", limit_nano=10**15, thresholds=[50, 80])
    BudgetFactory(tenant=tenant, scope="feature", feature=feature, period="day", limit_nano=10**15)
    hold = post(api, "/api/v1/allowances", ASK).json()["id"]
    assert post(api, f"/api/v1/allowances/{hold}/commit", USAGE).status_code == 200
    return api


def test_an_allowance_is_one_round_trip(warm_api):
    with round_trips() as trips:
        response = post(warm_api, "/api/v1/allowances", ASK)
    assert response.status_code == 201
    assert trips.count == 1, trips.sent


def test_a_commit_is_the_holds_read_and_one_statement(warm_api):
    hold = post(warm_api, "/api/v1/allowances", ASK).json()["id"]
    with round_trips() as trips:
        response = post(warm_api, f"/api/v1/allowances/{hold}/commit", USAGE)
    assert response.status_code == 200
    assert response.json()["state"] == "committed"
    assert trips.count == 2, trips.sent



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
