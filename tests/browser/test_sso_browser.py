"""A real browser through single sign-on against the local provider stub, and through an invitation."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from governance.models import Membership, Role, Tenant
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


def test_an_owner_invites_and_the_new_person_chooses_a_password(live_server, new_page, screenshot):
    from django.contrib.auth import get_user_model

    tenant = Tenant.objects.create(slug="acme", name="Acme")
    owner = get_user_model().objects.create_user("owner@acme.test", "owner@acme.test", "browser-pass-123")
    Membership.objects.create(user=owner, tenant=tenant, role=Role.OWNER)
    page = new_page(1440)
    page.goto(f"{live_server.url}/login/?next=/t/acme/members/")
    page.fill("#id_username", "owner@acme.test")
    page.fill("#id_password", "browser-pass-123")
    page.click("button[type=submit]")
    page.fill("#id_email", "new@corp.test")
    page.select_option("#id_role", "viewer")
    page.get_by_role("button", name="Send invitation").click()
    assert page.get_by_text("Invitation sent to new@corp.test (viewer).").is_visible()
    assert "new@corp.test" in page.get_by_test_id("pending-invitations").inner_text()
    screenshot(page, "members-pending-1440")
    path = re.search(r"https?://[^/\s]+(/invitations/[^/\s]+/)", mail.outbox[-1].body).group(1)
    assert path not in page.content()

    invitee = new_page(375, 800)
    invitee.goto(live_server.url + path)
    assert invitee.get_by_role("heading", name="Join Acme").is_visible()
    screenshot(invitee, "invitation-375")
    invitee.fill("#id_password1", "a-passphrase-of-my-own-42")
    invitee.fill("#id_password2", "a-passphrase-of-my-own-42")
    invitee.get_by_role("button", name="Create my account and join").click()
    invitee.wait_for_url(f"{live_server.url}/t/acme/")
    assert invitee.get_by_text("You joined Acme as viewer.").is_visible()
    assert Membership.objects.get(tenant=tenant, user__username="new@corp.test").role == Role.VIEWER
