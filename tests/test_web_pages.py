"""The web UI: sign-in, roles, tenant isolation, and the pages admins use every morning."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from budgets import features as services
from budgets.models import Budget
from governance.models import ApiKey, AuditEntry, Feature, Membership, Role
from governance.web.forms import FeatureForm
from tests.factories import BudgetFactory, FeatureFactory
from usage.models import NANO, UsageRollup

User = get_user_model()


def member(tenant, role: str, username: str | None = None):
    user = User.objects.create_user(username=username or f"{role}@{tenant.slug}.test", password="pw-123456789")
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


@pytest.fixture
def owner(tenant):
    return member(tenant, Role.OWNER)


@pytest.fixture
def admin(tenant):
    return member(tenant, Role.ADMIN)


@pytest.fixture
def viewer(tenant):
    return member(tenant, Role.VIEWER)


@pytest.fixture
def outsider(other_tenant):
    return member(other_tenant, Role.OWNER)


@pytest.fixture
def as_admin(client, admin):
    client.force_login(admin)
    return client


@pytest.fixture
def as_viewer(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def as_owner(client, owner):
    client.force_login(owner)
    return client


def rollup(tenant, feature, *, day, cost_usd: int, model="claude-sonnet-4-5-20250929", family="sonnet"):
    return UsageRollup.objects.create(
        tenant=tenant, feature=feature, model=model, family=family, service_tier="standard", day=day,
        calls=10, input_tokens=1000, output_tokens=500, cost_nano=cost_usd * NANO,
    )


# --- sign-in ------------------------------------------------------------------------------


def test_pages_need_a_signed_in_user(client, tenant):
    response = client.get("/t/acme/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_sign_in_leads_to_the_only_tenant_dashboard(client, owner):
    response = client.post("/login/", {"username": owner.username, "password": "pw-123456789"}, follow=True)
    assert response.redirect_chain[-1][0] == "/t/acme/"
    assert b"Budgets" in response.content


def test_login_form_needs_csrf(owner):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    response = strict.post("/login/", {"username": owner.username, "password": "pw-123456789"})
    assert response.status_code == 403


def test_sign_out_is_a_post(as_owner):
    response = as_owner.post("/logout/")
    assert response.status_code == 302
    assert as_owner.get("/t/acme/").status_code == 302


def test_password_change(as_owner, owner):
    response = as_owner.post("/account/password/", {
        "old_password": "pw-123456789", "new_password1": "a-much-better-passphrase-9",
        "new_password2": "a-much-better-passphrase-9",
    })
    assert response.status_code == 302
    owner.refresh_from_db()
    assert owner.check_password("a-much-better-passphrase-9")


def test_user_of_several_tenants_chooses_and_switches(client, tenant, other_tenant):
    user = member(tenant, Role.VIEWER, "both@x.test")
    Membership.objects.create(user=user, tenant=other_tenant, role=Role.ADMIN)
    client.force_login(user)
    chooser = client.get("/")
    assert chooser.status_code == 200
    assert b"/t/acme/" in chooser.content and b"/t/globex/" in chooser.content
    page = client.get("/t/globex/")
    # The switcher lists both tenants; the last one visited is where "/" leads next.
    assert b'href="/t/acme/"' in page.content
    assert client.get("/")["Location"] == "/t/globex/"


# --- roles and isolation ----------------------------------------------------------------------


def test_viewer_reads_but_cannot_reach_edit_pages(as_viewer, tenant, feature):
    budget = BudgetFactory(tenant=tenant)
    for url in ("/t/acme/", "/t/acme/budgets/", f"/t/acme/budgets/{budget.pk.hex}/", "/t/acme/features/",
                "/t/acme/keys/", "/t/acme/members/", "/t/acme/usage/"):
        assert as_viewer.get(url).status_code == 200, url
    for url in ("/t/acme/features/new/", f"/t/acme/features/{feature.key}/", "/t/acme/budgets/new/",
                f"/t/acme/budgets/{budget.pk.hex}/edit/", f"/t/acme/budgets/{budget.pk.hex}/delete/",
                "/t/acme/keys/new/"):
        assert as_viewer.get(url).status_code == 403, url
    response = as_viewer.post(f"/t/acme/budgets/{budget.pk.hex}/delete/")
    assert response.status_code == 403
    assert Budget.objects.filter(pk=budget.pk).exists()


def test_admin_cannot_manage_members(as_admin, tenant):
    response = as_admin.post("/t/acme/members/add/", {"email": "new@x.test", "role": "owner"})
    assert response.status_code == 403
    assert not User.objects.filter(username="new@x.test").exists()


def test_outsider_gets_404_for_another_tenants_pages(client, outsider, tenant, feature, service_key):
    client.force_login(outsider)
    budget = BudgetFactory(tenant=tenant)
    key, _ = service_key
    for url in ("/t/acme/", "/t/acme/budgets/", f"/t/acme/budgets/{budget.pk.hex}/",
                f"/t/acme/budgets/{budget.pk.hex}/edit/", f"/t/acme/features/{feature.key}/",
                f"/t/acme/keys/{key.pk.hex}/revoke/", "/t/acme/members/", "/t/acme/usage/?format=csv",
                "/t/nonexistent/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/t/acme/keys/{key.pk.hex}/revoke/").status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_another_tenants_budget_under_my_tenant_is_404(client, outsider, tenant):
    client.force_login(outsider)
    budget = BudgetFactory(tenant=tenant)
    assert client.get(f"/t/globex/budgets/{budget.pk.hex}/").status_code == 404
    assert client.post(f"/t/globex/budgets/{budget.pk.hex}/delete/").status_code == 404


# --- features ------------------------------------------------------------------------------------


def test_admin_creates_a_feature(as_admin, tenant):
    response = as_admin.post("/t/acme/features/new/", {
        "key": "support-bot", "name": "Support bot", "default_model": "claude-sonnet-5-5",
        "fallback_models": "claude-haiku-4-5-20251001", "max_tokens_cap": "2048", "interactive": "on",
        "fail_mode": "open", "active": "on",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    feature = Feature.objects.get(tenant=tenant, key="support-bot")
    assert feature.fallback_models == ["claude-haiku-4-5-20251001"]
    assert feature.max_tokens_cap == 2048
    assert AuditEntry.objects.filter(tenant=tenant, object_type="feature", action="create").exists()


def test_feature_form_shows_errors_next_to_fields(as_admin, feature):
    response = as_admin.post("/t/acme/features/new/", {
        "key": "Bad Key!", "name": "", "fallback_models": "gpt-4", "fail_mode": "open",
    })
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'id_key_error">.*Use 1-63 lowercase letters', html, re.S)
    assert re.search(r'id_name_error">.*This field is required', html, re.S)
    assert re.search(r'id_fallback_models_error">.*No price is known for: gpt-4', html, re.S)
    duplicate = as_admin.post("/t/acme/features/new/", {"key": feature.key, "name": "X", "fail_mode": "open"})
    assert "A feature with this key exists." in duplicate.content.decode()


def test_feature_with_usage_cannot_be_deleted(as_admin, tenant, feature):
    from usage.models import UsageEvent

    UsageEvent.objects.create(tenant=tenant, feature=feature, model="claude-sonnet-4-5-20250929", family="sonnet",
                              cost_nano=1, occurred_at=timezone.now(), source="report")
    response = as_admin.post(f"/t/acme/features/{feature.key}/delete/", follow=True)
    assert "has recorded usage; deactivate it instead" in response.content.decode()
    assert Feature.objects.filter(pk=feature.pk).exists()


# --- budgets ----------------------------------------------------------------------------------------


def test_admin_creates_a_budget_sees_it_on_the_dashboard_and_edits_it_with_an_audit_entry(
    as_admin, tenant, feature, admin
):
    response = as_admin.post("/t/acme/budgets/new/", {
        "name": "Support monthly", "scope": "feature", "feature": str(feature.pk), "period": "month",
        "limit_usd": "100", "enforcement": "block", "thresholds": "50, 80, 100", "forecast_alert": "on",
        "active": "on",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    budget = Budget.objects.get(tenant=tenant, name="Support monthly")
    assert response["Location"] == f"/t/acme/budgets/{budget.pk.hex}/"
    assert budget.limit_nano == 100 * NANO

    dashboard = as_admin.get("/t/acme/").content.decode()
    assert "Support monthly" in dashboard
    assert "$100.00" in dashboard

    response = as_admin.post(f"/t/acme/budgets/{budget.pk.hex}/edit/", {
        "name": "Support monthly", "scope": "feature", "feature": str(feature.pk), "period": "month",
        "limit_usd": "250.50", "enforcement": "block", "thresholds": "50, 80, 100", "forecast_alert": "on",
        "active": "on",
    })
    assert response.status_code == 302
    budget.refresh_from_db()
    assert budget.limit_nano == 250_500_000_000
    detail = as_admin.get(f"/t/acme/budgets/{budget.pk.hex}/").content.decode()
    assert re.search(r"limit \(USD\)</strong>: <del>\$100\.00</del> → <ins>\$250\.50</ins>", detail)
    assert admin.username in detail


def test_budget_form_validation_messages(as_admin, feature):
    response = as_admin.post("/t/acme/budgets/new/", {
        "name": "x", "scope": "feature", "period": "month", "enforcement": "block", "thresholds": "50, abc",
    })
    html = response.content.decode()
    assert response.status_code == 200
    assert re.search(r'id_thresholds_error">.*&#x27;abc&#x27; is not a whole percentage', html, re.S)
    response = as_admin.post("/t/acme/budgets/new/", {
        "name": "x", "scope": "feature", "period": "month", "enforcement": "block", "thresholds": "50",
    })
    html = response.content.decode()
    assert re.search(r'id_limit_usd_error">.*Set a USD limit, a token limit, or both', html, re.S)
    assert re.search(r'id_feature_error">.*A feature budget needs a feature', html, re.S)


def test_budget_of_another_tenants_feature_is_refused(as_admin, other_tenant):
    foreign = FeatureFactory(tenant=other_tenant, key="theirs")
    response = as_admin.post("/t/acme/budgets/new/", {
        "name": "x", "scope": "feature", "feature": str(foreign.pk), "period": "month", "limit_usd": "5",
        "enforcement": "block", "thresholds": "50",
    })
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Budget.objects.filter(name="x").exists()


def test_dashboard_draws_budget_bars_and_charts_from_rollups(as_viewer, tenant, feature):
    BudgetFactory(tenant=tenant, name="Tenant monthly", limit_nano=500 * NANO)
    today = timezone.now().date()
    for days_ago in range(10):
        rollup(tenant, feature, day=today - timedelta(days=days_ago), cost_usd=3)
    response = as_viewer.get("/t/acme/")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count("<svg") >= 4  # the budget bar, cumulative, by feature, by model
    assert "Spend per day by feature" in html and feature.name in html
    assert "claude-sonnet-4-5-20250929" in html
    assert "forecast" in html


def test_fresh_tenant_pages_have_empty_states(as_owner):
    assert "No budgets yet" in as_owner.get("/t/acme/").content.decode()
    assert "No usage in the last 30 days" in as_owner.get("/t/acme/").content.decode()
    assert "No features yet" in as_owner.get("/t/acme/features/").content.decode()
    assert "No API keys yet" in as_owner.get("/t/acme/keys/").content.decode()
    assert "No usage matches" in as_owner.get("/t/acme/usage/").content.decode()


# --- keys ---------------------------------------------------------------------------------------------


def test_key_secret_is_shown_exactly_once(as_admin, tenant, feature):
    response = as_admin.post("/t/acme/keys/new/", {"name": "support prod", "role": "service",
                                                   "features": [str(feature.pk)]})
    assert response.status_code == 302
    key = ApiKey.objects.get(tenant=tenant, name="support prod")
    first = as_admin.get(response["Location"]).content.decode()
    secret = re.search(r'data-testid="new-secret">([^<]+)<', first).group(1)
    assert secret.startswith(f"cpt_{key.prefix}_")
    assert secret not in as_admin.get(response["Location"]).content.decode()
    listing = as_admin.get("/t/acme/keys/").content.decode()
    assert key.prefix in listing and secret not in listing


def test_a_key_secret_cookie_opens_only_its_own_key_and_only_briefly(as_admin, tenant):
    import time_machine

    first = as_admin.post("/t/acme/keys/new/", {"name": "one", "role": "service"})
    cookie = as_admin.cookies["new_key_secret"].value
    other = as_admin.post("/t/acme/keys/new/", {"name": "two", "role": "service"})
    # The first key's cookie, replayed on the second key's page, shows nothing.
    as_admin.cookies["new_key_secret"] = cookie
    assert 'data-testid="new-secret"' not in as_admin.get(other["Location"]).content.decode()
    # Nor on its own page once it is older than two minutes.
    as_admin.cookies["new_key_secret"] = cookie
    with time_machine.travel(timezone.now() + timedelta(minutes=3)):
        assert 'data-testid="new-secret"' not in as_admin.get(first["Location"]).content.decode()


def test_admin_revokes_a_key(as_admin, service_key):
    key, _ = service_key
    response = as_admin.post(f"/t/acme/keys/{key.pk.hex}/revoke/")
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


# --- members -------------------------------------------------------------------------------------------


def test_owner_cannot_demote_the_last_owner(as_owner, tenant, owner):
    mine = Membership.objects.get(tenant=tenant, user=owner)
    response = as_owner.post(f"/t/acme/members/{mine.pk}/role/", {"role": "viewer"}, follow=True)
    assert "at least one owner" in response.content.decode()
    assert Membership.objects.get(pk=mine.pk).role == "owner"


# --- usage explorer ------------------------------------------------------------------------------------


def test_usage_explorer_filters_and_exports_csv(as_viewer, tenant, feature):
    other = FeatureFactory(tenant=tenant, key="=cmd")
    today = timezone.now().date()
    rollup(tenant, feature, day=today, cost_usd=2)
    rollup(tenant, other, day=today, cost_usd=5)
    page = as_viewer.get("/t/acme/usage/", {"feature": feature.key, "group_by": ["feature"]}).content.decode()
    assert "$2.00" in page and "$7.00" not in page
    response = as_viewer.get("/t/acme/usage/", {"group_by": ["feature"], "format": "csv"})
    assert response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    assert lines[0].startswith("feature,calls,cost_usd")
    assert "'=cmd,10,5.000000,1000,500,0,0,0,0,0" in lines  # formula-looking cells are defused
    bad = as_viewer.get("/t/acme/usage/", {"start": "2026-02-01", "end": "2026-01-01"})
    assert "The end must not be before the start." in bad.content.decode()
    ancient = as_viewer.get("/t/acme/usage/", {"start": "1900-01-01"}).content.decode()
    assert "Must be a day from 2023-01-01 to 2099-12-31; 1900-01-01 is outside." in ancient


def test_the_csv_of_the_default_view_has_its_rows(as_viewer, tenant, feature):
    # Given usage today, and the explorer opened with no filters
    rollup(tenant, feature, day=timezone.now().date(), cost_usd=2)
    page = as_viewer.get("/t/acme/usage/").content.decode()
    assert 'href="?format=csv"' in page

    # When its "Export CSV" link is followed
    lines = as_viewer.get("/t/acme/usage/?format=csv").content.decode().splitlines()

    # Then the file has the default view's rows: by day and feature
    assert lines[0].startswith("day,feature,calls,cost_usd")
    assert len(lines) == 2 and f",{feature.key},10,2.000000," in lines[1]


def test_saving_a_feature_unchanged_changes_nothing(as_admin, tenant):
    # Given a feature whose default model is an alias, as services send it
    feature = FeatureFactory(tenant=tenant, key="bot", default_model="claude-haiku-4-5",
                             allowed_models=["claude-haiku-4-5", "claude-sonnet-4-5"])
    page = as_admin.get("/t/acme/features/bot/").content.decode()
    assert '<option value="claude-haiku-4-5" selected>' in page
    assert '<option value="claude-haiku-4-5-20251001">' in page  # dated ids are offered too
    # a retired model stays selectable where it is saved, and says so; its dated id is not offered
    assert "claude-sonnet-4-5 (saved; no longer on sale)" in page
    assert '<option value="claude-sonnet-4-5-20250929">' not in page

    # When the form is posted back as it was shown
    form = FeatureForm(initial=services.feature_snapshot(feature))
    data = {name: form[name].value() for name in form.fields}
    data = {k: v for k, v in data.items() if v not in (None, False)}
    response = as_admin.post("/t/acme/features/bot/", data)
    assert response.status_code == 302, response.content.decode()[:2000]

    # Then nothing changed, and nothing was audited
    feature.refresh_from_db()
    assert feature.default_model == "claude-haiku-4-5"
    assert feature.allowed_models == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    assert not AuditEntry.objects.filter(object_type="feature", action="update").exists()


def test_a_nul_in_a_page_url_is_a_400(as_admin, feature):
    assert as_admin.get("/t/acme/budgets/new/", {"feature": "a\x00b"}).status_code == 400
    assert as_admin.get("/t/acme/budgets/new/", {"feature": feature.key}).status_code == 200
