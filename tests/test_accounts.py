"""Accounts and access: invitations, the first owner's one-time password, sign-in throttling, key secrets."""

from __future__ import annotations

import re
import socket
from datetime import timedelta

import pytest
import time_machine
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from governance.models import AuditEntry, Invitation, Membership, OneTimePassword, Role
from tests.conftest import make_client

User = get_user_model()
PASSWORD = "pw-123456789"
NEW_PASSWORD = "a-passphrase-of-my-own-42"


def member(tenant, role: str, username: str):
    user = User.objects.create_user(username=username, email=username, password=PASSWORD)
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def invite(owner_client: Client, slug: str, email: str, role: str = "admin") -> str:
    """Invite through the members page; return the link the invitee's email carries."""
    sent = len(mail.outbox)
    response = owner_client.post(f"/t/{slug}/members/add/", {"email": email, "role": role})
    assert response.status_code == 302, response.content.decode()[:500]
    assert len(mail.outbox) == sent + 1
    message = mail.outbox[-1]
    assert message.to == [email.lower()]
    return re.search(r"https?://[^/\s]+(/invitations/[^/\s]+/)", message.body).group(1)


def pending_section(members_page: str) -> str:
    return members_page.split("Pending invitations", 1)[1].split("</section>", 1)[0]


@pytest.fixture
def owner(tenant):
    return member(tenant, Role.OWNER, "owner@acme.test")


@pytest.fixture
def as_owner(owner):
    return signed_in(owner)


# --- invitations -----------------------------------------------------------------------------


def test_a_new_person_accepts_by_choosing_their_own_password(as_owner, tenant):
    link = invite(as_owner, "acme", "New@Corp.test", "viewer")
    members_page = as_owner.get("/t/acme/members/").content.decode()
    assert "new@corp.test" in pending_section(members_page)
    assert link not in members_page  # only the email has the link
    assert not User.objects.filter(username="new@corp.test").exists()

    visitor = Client()
    page = visitor.get(link)
    assert page.status_code == 200
    assert "Choose a password" in page.content.decode()
    mismatch = visitor.post(link, {"password1": NEW_PASSWORD, "password2": "something-else-42"})
    assert "The two passwords differ" in mismatch.content.decode()
    response = visitor.post(link, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/t/acme/"
    assert visitor.get("/t/acme/").status_code == 200
    user = User.objects.get(username="new@corp.test")
    assert user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(tenant=tenant, user=user).role == Role.VIEWER
    assert Client().get(link).status_code == 404  # used once


def test_an_existing_account_joins_only_by_accepting(as_owner, tenant, other_tenant):
    someone = member(other_tenant, Role.VIEWER, "someone@corp.test")
    link = invite(as_owner, "acme", "someone@corp.test")
    assert not Membership.objects.filter(tenant=tenant, user=someone).exists()

    anonymous = Client().get(link).content.decode()
    assert "Sign in to accept" in anonymous and "Choose a password" not in anonymous
    # A password posted to the link does not touch the existing account.
    Client().post(link, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    someone.refresh_from_db()
    assert someone.check_password(PASSWORD) and not someone.check_password(NEW_PASSWORD)
    assert not Membership.objects.filter(tenant=tenant, user=someone).exists()

    client = signed_in(someone)
    assert "Accept and join" in client.get(link).content.decode()
    assert not Membership.objects.filter(tenant=tenant, user=someone).exists()  # opening it changes nothing
    response = client.post(link)
    assert response.status_code == 302 and response["Location"] == "/t/acme/"
    assert Membership.objects.get(tenant=tenant, user=someone).role == Role.ADMIN
    assert AuditEntry.objects.filter(tenant=tenant, object_type="invitation", action="accept").exists()


def test_a_stolen_link_opened_by_another_signed_in_user_is_refused(as_owner, tenant, other_tenant):
    member(other_tenant, Role.VIEWER, "cfo@corp.test")
    thief = member(other_tenant, Role.OWNER, "thief@other.test")
    link = invite(as_owner, "acme", "cfo@corp.test")
    client = signed_in(thief)
    assert client.get(link).status_code == 403
    response = client.post(link)
    assert response.status_code == 403
    assert "another address" in response.content.decode()
    assert not Membership.objects.filter(tenant=tenant, user=thief).exists()
    assert client.get("/t/acme/").status_code == 404
    assert Invitation.objects.get(tenant=tenant, email="cfo@corp.test").is_pending


def test_an_invitation_expires(as_owner, tenant, settings):
    link = invite(as_owner, "acme", "late@corp.test")
    with time_machine.travel(timezone.now() + timedelta(days=settings.INVITATION_TTL_DAYS, minutes=1)):
        response = Client().get(link)
        assert response.status_code == 410
        assert "Invitation expired" in response.content.decode()
        assert Client().post(link, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD}).status_code == 410
        assert "late@corp.test" not in pending_section(as_owner.get("/t/acme/members/").content.decode())
    assert not User.objects.filter(username="late@corp.test").exists()


def test_owner_revokes_a_pending_invitation(as_owner, tenant, other_tenant):
    link = invite(as_owner, "acme", "gone@corp.test")
    invitation = Invitation.objects.get(tenant=tenant, email="gone@corp.test")
    outsider = signed_in(member(other_tenant, Role.OWNER, "owner@globex.test"))
    assert outsider.post(f"/t/acme/members/invitations/{invitation.pk.hex}/revoke/").status_code == 404
    response = as_owner.post(f"/t/acme/members/invitations/{invitation.pk.hex}/revoke/", follow=True)
    assert "revoked" in response.content.decode()
    assert Client().get(link).status_code == 404
    assert Client().post(link, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD}).status_code == 404
    assert not User.objects.filter(username="gone@corp.test").exists()


def test_inviting_again_voids_the_old_link_and_members_cannot_be_invited(as_owner, tenant, owner):
    old = invite(as_owner, "acme", "twice@corp.test")
    new = invite(as_owner, "acme", "twice@corp.test")
    assert Client().get(old).status_code == 404
    assert Client().get(new).status_code == 200
    response = as_owner.post("/t/acme/members/add/", {"email": "OWNER@acme.test", "role": "viewer"})
    assert response.status_code == 400
    assert "already a member" in response.content.decode()


def test_an_invitation_that_cannot_be_mailed_is_withdrawn(as_owner, tenant, settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    response = as_owner.post("/t/acme/members/add/", {"email": "nomail@corp.test", "role": "viewer"})
    assert response.status_code == 400
    assert "could not be sent" in response.content.decode()
    assert not Invitation.objects.get(tenant=tenant, email="nomail@corp.test").is_pending


def test_no_page_shows_a_password_or_link_to_the_inviter(as_owner, tenant):
    response = as_owner.post("/t/acme/members/add/", {"email": "quiet@corp.test", "role": "viewer"}, follow=True)
    token = re.search(r"/invitations/([^/\s]+)/", mail.outbox[-1].body).group(1)
    page = response.content.decode()
    assert "Invitation sent to quiet@corp.test" in page
    assert token not in page
    assert "quiet@corp.test" in pending_section(as_owner.get("/t/acme/members/").content.decode())


@pytest.mark.parametrize("order", ["b_first", "a_first", "b_after_acceptance"])
def test_cross_tenant_takeover_sequence_fails_whatever_the_order(tenant, other_tenant, order):
    """B's owner invites A's CFO, then removes them; A's owner invites the same address.

    B's owner must never be able to sign in as the CFO or act in tenant A.
    """
    a_owner = signed_in(member(tenant, Role.OWNER, "owner@a-corp.test"))
    b_owner_user = member(other_tenant, Role.OWNER, "owner@b-corp.test")
    b_owner = signed_in(b_owner_user)
    cfo = "cfo@a-corp.test"
    seen_by_b: list[str] = []

    def b_invites_and_withdraws():
        response = b_owner.post("/t/globex/members/add/", {"email": cfo, "role": "admin"}, follow=True)
        seen_by_b.append(response.content.decode())
        invitation = Invitation.objects.filter(tenant=other_tenant, email=cfo).first()
        if invitation and invitation.is_pending:
            seen_by_b.append(b_owner.post(f"/t/globex/members/invitations/{invitation.pk.hex}/revoke/",
                                          follow=True).content.decode())
        else:  # the CFO accepted already: B's owner removes the membership instead
            membership = Membership.objects.get(tenant=other_tenant, user__username=cfo)
            seen_by_b.append(b_owner.post(f"/t/globex/members/{membership.pk}/remove/", follow=True)
                             .content.decode())
        seen_by_b.append(b_owner.get("/t/globex/members/").content.decode())

    def cfo_accepts_a():
        link = invite(a_owner, "acme", cfo)
        cfo_client = Client()
        if User.objects.filter(username=cfo).exists():
            cfo_client.force_login(User.objects.get(username=cfo))
            assert cfo_client.post(link).status_code == 302
        else:
            assert cfo_client.post(link, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD}).status_code == 302

    if order == "b_first":
        b_invites_and_withdraws()
        cfo_accepts_a()
    elif order == "a_first":
        cfo_accepts_a()
        b_invites_and_withdraws()
    else:
        b_link = invite(b_owner, "globex", cfo)
        Client().post(b_link, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})  # the CFO joins B
        b_invites_and_withdraws()
        cfo_accepts_a()

    # Whatever B's owner saw, no word of it is the CFO's password.
    cfo_user = User.objects.get(username=cfo)
    candidates = {word for page in seen_by_b for word in re.findall(r"[A-Za-z0-9_\-]{8,}", page)}
    assert candidates and not [word for word in candidates if cfo_user.check_password(word)]
    assert sign_in(Client(), cfo, "", REMOTE_ADDR="198.51.100.9").status_code == 200
    # And B's owner, signed in as themselves, cannot reach or act in tenant A.
    assert b_owner.get("/t/acme/").status_code == 404
    assert b_owner.post("/t/acme/keys/new/", {"name": "mine now", "role": "admin"}).status_code == 404
    assert not Membership.objects.filter(tenant=tenant, user=b_owner_user).exists()
    assert Membership.objects.get(tenant=tenant, user__username=cfo).role == Role.ADMIN


# --- the first owner's one-time password -------------------------------------------------------


def test_the_first_owner_must_replace_the_one_time_password(db, capsys):
    call_command("create_tenant", "initech", "--name", "Initech", "--owner-email", "Boss@Initech.test")
    out = capsys.readouterr().out
    password = re.search(r"one-time password: (\S+)", out).group(1)
    client = Client()
    response = client.post("/login/", {"username": "boss@initech.test", "password": password})
    assert response.status_code == 302
    assert client.get("/t/initech/")["Location"] == "/account/password/"
    assert client.get("/admin/")["Location"] == "/account/password/"
    page = client.get("/account/password/").content.decode()
    assert "one-time password that someone else chose" in page
    same = client.post("/account/password/", {"old_password": password, "new_password1": password,
                                              "new_password2": password})
    assert "different from the current one" in same.content.decode()
    response = client.post("/account/password/", {"old_password": password, "new_password1": NEW_PASSWORD,
                                                  "new_password2": NEW_PASSWORD})
    assert response.status_code == 302
    assert client.get("/t/initech/").status_code == 200
    assert not OneTimePassword.objects.exists()
    assert not Client().login(username="boss@initech.test", password=password)
    again = Client()
    again.post("/login/", {"username": "boss@initech.test", "password": NEW_PASSWORD})
    assert again.get("/t/initech/").status_code == 200


# --- sign-in throttling ------------------------------------------------------------------------


def sign_in(client: Client, username: str, password: str, **meta):
    return client.post("/login/", {"username": username, "password": password}, **meta)


def test_fifty_failures_for_one_account_lock_that_account_and_no_other(tenant):
    victim = member(tenant, Role.VIEWER, "victim@acme.test")
    bystander = member(tenant, Role.VIEWER, "bystander@acme.test")
    client = Client()
    statuses = [sign_in(client, "Victim@acme.test", "wrong", REMOTE_ADDR=f"203.0.113.{i % 25}").status_code
                for i in range(50)]
    assert statuses[:9] == [200] * 9 and set(statuses[10:]) == {429}
    locked = sign_in(client, victim.username, PASSWORD, REMOTE_ADDR="198.51.100.1")
    assert locked.status_code == 429
    assert "Too many failed sign-in attempts" in locked.content.decode()
    assert locked["Retry-After"] == "900"
    # Another account signs in, even from the addresses the failures came from.
    assert sign_in(Client(), bystander.username, PASSWORD, REMOTE_ADDR="203.0.113.3").status_code == 302


def test_fifty_failures_from_behind_a_trusted_proxy_lock_out_only_their_sender(tenant, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    colleague = member(tenant, Role.VIEWER, "colleague@acme.test")
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    client = Client()
    for i in range(50):  # spraying: a different account each time, and a forged left-hand entry
        sign_in(client, f"user{i}@acme.test", "Winter2026!", HTTP_X_FORWARDED_FOR=f"9.9.9.{i}, 192.0.2.66", **proxy)
    assert sign_in(client, colleague.username, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.66", **proxy).status_code == 429
    assert sign_in(Client(), colleague.username, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.7",
                   **proxy).status_code == 302


def test_without_trusted_proxies_x_forwarded_for_is_not_believed(tenant):
    colleague = member(tenant, Role.VIEWER, "colleague@acme.test")
    client = Client()
    for i in range(50):
        sign_in(client, f"user{i}@acme.test", "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}", REMOTE_ADDR="192.0.2.9")
    assert sign_in(client, colleague.username, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.200",
                   REMOTE_ADDR="192.0.2.9").status_code == 429


@pytest.mark.parametrize("count,remote,forwarded,expected", [
    (0, "192.0.2.1", "203.0.113.5", "192.0.2.1"),              # no trusted proxy: the header is the client's word
    (1, "10.0.0.2", "6.6.6.6, 203.0.113.5", "203.0.113.5"),     # the proxy appended the last entry
    (2, "10.0.0.3", "6.6.6.6, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
    (2, "10.0.0.3", "203.0.113.5", "10.0.0.3"),                 # fewer entries than proxies: only REMOTE_ADDR is real
    (1, "10.0.0.2", "not-an-address", "10.0.0.2"),
    (1, "10.0.0.2", "2001:DB8::1", "2001:db8::1"),
    (0, "", "", None),                                          # a Unix socket: no address known
])
def test_the_client_address_is_read_through_trusted_proxies_only(settings, count, remote, forwarded, expected):
    from django.test import RequestFactory

    from governance.web.throttle import client_address

    settings.TRUSTED_PROXY_COUNT = count
    request = RequestFactory().get("/login/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_address(request) == expected


def test_a_sign_in_without_a_client_address_is_still_counted(tenant):
    colleague = member(tenant, Role.VIEWER, "colleague@acme.test")
    assert sign_in(Client(), "nobody@acme.test", "wrong", REMOTE_ADDR="").status_code == 200
    assert sign_in(Client(), colleague.username, PASSWORD, REMOTE_ADDR="").status_code == 302


def test_django_admin_login_goes_through_the_same_throttle(db):
    User.objects.create_superuser("root@ops.test", "root@ops.test", PASSWORD)
    client = Client()
    for _ in range(10):
        response = client.post("/admin/login/?next=/admin/", {"username": "root@ops.test", "password": "wrong"})
    assert response.status_code == 429
    assert client.post("/admin/login/?next=/admin/", {"username": "root@ops.test",
                                                      "password": PASSWORD}).status_code == 429
    # The lock is the account's, so the web sign-in refuses it too.
    assert sign_in(Client(), "root@ops.test", PASSWORD, REMOTE_ADDR="198.51.100.2").status_code == 429


# --- key secrets are never stored ----------------------------------------------------------------


def test_no_key_secret_in_any_table_after_creating_keys_in_the_ui_and_the_api(tenant, admin_api):
    admin = member(tenant, Role.ADMIN, "admin@acme.test")
    client = signed_in(admin)
    created = client.post("/t/acme/keys/new/", {"name": "from the ui", "role": "service"})
    page = client.get(created["Location"]).content.decode()
    secrets_made = [re.search(r'data-testid="new-secret">([^<]+)<', page).group(1)]
    response = admin_api.post("/api/v1/keys", {"name": "from the api", "role": "admin"}, format="json")
    assert response.status_code == 201
    secrets_made.append(response.json()["secret"])
    assert make_client(secrets_made[1]).get("/api/v1/whoami").status_code == 200

    rows: list[str] = []
    for model in apps.get_models():
        for values in model.objects.values_list(*[f.attname for f in model._meta.concrete_fields]):
            rows.append(repr(values))
    rows += [repr(session.get_decoded()) for session in Session.objects.all()]
    assert Session.objects.exists() and AuditEntry.objects.filter(object_type="apikey").count() >= 2
    for secret in secrets_made:
        # The part after "<scheme>_<prefix>_" is the secret's random body (it may hold "_" itself).
        body = secret.split("_", 2)[2]
        assert len(body) >= 40
        assert not [row for row in rows if secret in row or body in row]


# --- /healthz ------------------------------------------------------------------------------------


def test_healthz_tells_anonymous_callers_the_status_only(client, db, settings):
    settings.HEALTHZ_TOKEN = "probe-token"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/healthz", HTTP_AUTHORIZATION="Bearer wrong").json() == {"status": "ok"}
    detailed = client.get("/healthz", HTTP_AUTHORIZATION="Bearer probe-token").json()
    assert detailed == {"status": "ok", "database": "ok", "broker": "ok", "cache": "ok"}
    client.force_login(User.objects.create_user("ops@acme.test", is_staff=True))
    assert set(client.get("/healthz").json()) == {"status", "database", "broker", "cache"}


def test_healthz_without_a_token_configured_shows_no_details(client, db, settings):
    settings.HEALTHZ_TOKEN = ""
    assert client.get("/healthz", HTTP_AUTHORIZATION="Bearer ").json() == {"status": "ok"}


def test_a_failing_check_degrades_healthz_and_names_hosts_only_to_those_allowed(client, db, settings, monkeypatch):
    from governance import health

    settings.HEALTHZ_TOKEN = "probe-token"
    monkeypatch.setitem(health.CHECKS, "broker", lambda: health.Check(False, "redis://cache-7.internal:6379 refused"))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded"}
    detailed = client.get("/healthz", HTTP_AUTHORIZATION="Bearer probe-token")
    assert detailed.json()["broker"] == "redis://cache-7.internal:6379 refused"
    # A check that is not critical reports "degraded" and keeps the process in the load balancer.
    monkeypatch.setitem(health.CHECKS, "broker", lambda: health.Check(False, "slow", critical=False))
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "degraded"})
