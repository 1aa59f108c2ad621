"""The gateway's Anthropic API key on the provider connection: set over the API and in the UI, never shown."""

from __future__ import annotations

import pytest
from django.db import connection as db

from governance.models import Membership, Role
from tests.test_api_foundation import assert_error
from tests.test_web_pages import member
from usage.provider.models import ProviderConnection
from usage.provider.selectors import connection_ids_due, tenant_ids_to_reconcile

URL = "/api/v1/provider-connection"
INFERENCE_KEY = "sk-ant-api03-abcdefghijklmnop-GATE"
ADMIN_KEY = "sk-ant-admin01-abcdefghijklmnop-WXYZ"

pytestmark = pytest.mark.django_db


def test_an_inference_key_alone_creates_a_gateway_only_connection_that_never_syncs(admin_api, tenant):
    response = admin_api.put(URL, {"inference_api_key": INFERENCE_KEY}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["inference_api_key"] == "…GATE" and body["admin_key"] == ""
    with db.cursor() as cursor:
        cursor.execute("SELECT inference_api_key FROM provider_providerconnection")
        (stored,) = cursor.fetchone()
    assert INFERENCE_KEY not in stored  # encrypted at rest
    assert ProviderConnection.objects.get(tenant=tenant).inference_api_key == INFERENCE_KEY
    assert connection_ids_due(now=ProviderConnection.objects.get().created_at) == []
    assert tenant_ids_to_reconcile() == []


def test_the_inference_key_is_kept_replaced_or_removed(admin_api, tenant):
    admin_api.put(URL, {"admin_key": ADMIN_KEY, "inference_api_key": INFERENCE_KEY}, format="json")

    admin_api.put(URL, {"enabled": False}, format="json")
    assert ProviderConnection.objects.get().inference_api_key == INFERENCE_KEY
    admin_api.put(URL, {"inference_api_key": ""}, format="json")
    connection = ProviderConnection.objects.get()
    assert connection.inference_api_key == "" and connection.admin_key == ADMIN_KEY


@pytest.mark.parametrize(
    ("value", "message"),
    [(ADMIN_KEY, "That is an Admin API key"), ("not-a-key-at-all", "looks like sk-ant-api03-"), (12345678, None)],
)
def test_an_inference_key_that_cannot_be_one_is_refused(admin_api, tenant, value, message):
    response = admin_api.put(URL, {"inference_api_key": value}, format="json")

    assert_error(response, 400, "invalid_request")
    if message:
        assert message in str(response.json()["error"]["details"]["inference_api_key"])
    assert not ProviderConnection.objects.exists()


def test_an_owner_sets_the_gateway_key_in_the_ui_and_sees_it_masked(client, tenant):
    owner = member(tenant, Role.OWNER)
    client.force_login(owner)
    assert "Anthropic API key for the gateway" in client.get("/t/acme/provider/").content.decode()

    empty = client.post("/t/acme/provider/save/", {"enabled": "on"}).content.decode()
    assert "Give an Admin API key" in empty and not ProviderConnection.objects.exists()
    response = client.post("/t/acme/provider/save/", {"inference_api_key": INFERENCE_KEY, "enabled": "on"})

    assert response.status_code == 302
    page = client.get("/t/acme/provider/").content.decode()
    assert "…GATE" in page and INFERENCE_KEY not in page
    client.post("/t/acme/provider/save/", {"inference_api_key": "", "enabled": "on"})  # empty: keep it
    assert ProviderConnection.objects.get().inference_api_key == INFERENCE_KEY
    Membership.objects.filter(user=owner).update(role=Role.ADMIN)
    assert client.post("/t/acme/provider/save/", {"inference_api_key": INFERENCE_KEY}).status_code == 403
