"""OpenID Connect single sign-on against a local provider stub (discovery, JWKS, token, userinfo)."""

from __future__ import annotations

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from governance.models import Invitation, Membership, Role
from tests.oidc_stub import OidcStub, configure

User = get_user_model()


@pytest.fixture
def stub(httpserver, settings, db):
    provider = OidcStub(httpserver).install()
    configure(settings, provider)
    return provider


def sso_sign_in(client: Client):
    """Walk the redirects the browser would: app → provider → app's callback; return the callback's answer."""
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302, start.content[:300]
    at_provider = httpx.get(start["Location"], follow_redirects=False)
    assert at_provider.status_code == 302, at_provider.text
    callback = httpx.URL(at_provider.headers["Location"])
    return client.get(callback.path, dict(callback.params))


def invite(tenant, email: str, role: str = Role.ADMIN) -> None:
    from governance.audit import Actor
    from governance.services import invitation_create

    invitation_create(tenant=tenant, actor=Actor.system(), email=email, role=role)


def test_a_new_person_without_an_invitation_gets_an_account_but_no_tenant(stub, tenant):
    client = Client()
    response = sso_sign_in(client)
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/").content.decode()
    assert "not a member of any tenant" in page and "someone@corp.test" in page
    assert client.get("/t/acme/").status_code == 404
    user = User.objects.get(username="someone@corp.test")
    assert not user.has_usable_password() and not user.memberships.exists()


def test_a_first_sign_in_with_a_pending_invitation_joins_its_tenant(stub, tenant, other_tenant):
    invite(tenant, "someone@corp.test", Role.ADMIN)
    invite(other_tenant, "elsewhere@corp.test", Role.ADMIN)
    client = Client()
    assert sso_sign_in(client)["Location"] == "/"
    assert client.get("/")["Location"] == "/t/acme/"
    assert Membership.objects.get(tenant=tenant, user__username="someone@corp.test").role == Role.ADMIN
    assert not Membership.objects.filter(tenant=other_tenant).exists()
    assert Invitation.objects.get(tenant=tenant).accepted_at is not None


def test_an_existing_account_signs_in_but_joins_only_by_accepting(stub, tenant):
    existing = User.objects.create_user("someone@corp.test", "someone@corp.test", "pw-123456789")
    invite(tenant, "someone@corp.test")
    client = Client()
    assert sso_sign_in(client).status_code == 302
    assert client.get("/t/acme/").status_code == 404
    link = mail.outbox[-1].body.split("/invitations/", 1)[1].split("/", 1)[0]
    assert client.post(f"/invitations/{link}/")["Location"] == "/t/acme/"
    assert Membership.objects.filter(tenant=tenant, user=existing).exists()


def test_an_unverified_email_does_not_sign_in(stub, tenant):
    stub.person["email_verified"] = False
    invite(tenant, "someone@corp.test")
    client = Client()
    response = sso_sign_in(client)
    assert response["Location"] == "/login/"
    assert "did not sign you in" in client.get("/login/").content.decode()
    assert not User.objects.filter(username="someone@corp.test").exists()


def test_a_token_for_another_client_does_not_sign_in(stub):
    stub.audience = "some-other-app"
    client = Client()
    assert sso_sign_in(client)["Location"] == "/login/"
    assert client.get("/").status_code == 302  # still signed out
    assert not User.objects.filter(username="someone@corp.test").exists()


def test_a_callback_with_a_forged_state_does_not_sign_in(stub):
    client = Client()
    client.get("/oidc/authenticate/")
    response = client.get("/oidc/callback/", {"code": "made-up", "state": "forged"})
    assert response["Location"] == "/login/"
    assert client.get("/").status_code == 302


def test_without_configuration_there_is_no_sso(db, settings):
    settings.OIDC_ISSUER = ""
    assert Client().get("/oidc/authenticate/").status_code == 404
    assert Client().get("/oidc/callback/", {"code": "x", "state": "y"}).status_code == 404
    assert "Sign in with" not in Client().get("/login/").content.decode()


def test_the_login_page_offers_the_provider(stub):
    page = Client().get("/login/").content.decode()
    assert "Sign in with Stub IdP" in page


def test_an_unreachable_provider_sends_people_back_to_the_password_form(db, settings):
    import socket

    from governance.web import sso

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.OIDC_ISSUER, settings.OIDC_RP_CLIENT_ID, settings.OIDC_PROVIDER_NAME = (
        f"http://127.0.0.1:{port}", "comptroller-test", "Corp SSO")
    sso._discovery.clear()
    client = Client()
    response = client.get("/oidc/authenticate/")
    assert response["Location"] == "/login/"
    assert "Corp SSO cannot be reached right now" in client.get("/login/").content.decode()
