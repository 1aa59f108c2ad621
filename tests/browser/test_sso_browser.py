"""A real browser through single sign-on against the local provider stub, and through an invitation."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from governance.audit import Actor
from governance.models import Membership, Role, Tenant
from governance.services import invitation_create
from tests.oidc_stub import OidcStub, configure

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sso_without_membership_lands_on_a_page_that_says_so(live_server, httpserver, settings, new_page, screenshot):
    stub = OidcStub(httpserver, person={"sub": "p-7", "email": "newcomer@corp.test", "email_verified": True})
    configure(settings, stub.install())
    Tenant.objects.create(slug="acme", name="Acme")
    page = new_page(1440)
    page.goto(f"{live_server.url}/login/")
    page.get_by_role("link", name="Sign in with Stub IdP").click()
    page.wait_for_url(f"{live_server.url}/")
    assert page.get_by_role("heading", name="No tenant yet").is_visible()
    assert page.get_by_test_id("no-membership").inner_text().count("not a member of any tenant") == 1
    assert "newcomer@corp.test" in page.locator("header").inner_text()
    screenshot(page, "sso-no-membership-1440")
    assert page.goto(f"{live_server.url}/t/acme/").status == 404


def test_an_invited_person_chooses_a_password_and_lands_in_the_tenant(live_server, new_page, screenshot):
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    invitation_create(tenant=tenant, actor=Actor.system(), email="new@corp.test", role=Role.VIEWER)
    path = re.search(r"https?://[^/\s]+(/invitations/[^/\s]+/)", mail.outbox[-1].body).group(1)
    page = new_page(375, 800)
    page.goto(live_server.url + path)
    assert page.get_by_role("heading", name="Join Acme").is_visible()
    screenshot(page, "invitation-375")
    page.fill("#id_password1", "a-passphrase-of-my-own-42")
    page.fill("#id_password2", "a-passphrase-of-my-own-42")
    page.get_by_role("button", name="Create my account and join").click()
    page.wait_for_url(f"{live_server.url}/t/acme/")
    assert page.get_by_text("You joined Acme as viewer.").is_visible()
    assert Membership.objects.get(tenant=tenant, user__username="new@corp.test").role == Role.VIEWER
