"""A real browser through the admin's morning: sign in, features, budgets, audit, keys, roles."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model

from budgets.models import Budget
from governance.models import Feature, Membership, Role, Tenant
from tests.factories import BudgetFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-pass-123"


def user_in(tenant: Tenant, role: str, username: str):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    Membership.objects.create(user=user, tenant=tenant, role=role)
    return user


def sign_in(page, base: str, username: str, path: str = "/"):
    page.goto(f"{base}/login/?next={path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_admin_creates_feature_and_budget_edits_the_limit_and_keys_a_service(
    live_server, new_page, screenshot
):
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    user_in(tenant, Role.OWNER, "owner@acme.test")
    base = live_server.url
    page = new_page(1440)
    sign_in(page, base, "owner@acme.test")
    assert page.url == f"{base}/t/acme/"
    assert page.get_by_text("No budgets yet").is_visible()

    # A feature.
    page.get_by_role("link", name="Features", exact=True).click()
    page.get_by_role("link", name="Create the first feature").click()
    page.fill("#id_key", "support-bot")
    page.fill("#id_name", "Support bot")
    page.select_option("#id_default_model", "claude-sonnet-5-5")
    page.fill("#id_max_tokens_cap", "2048")
    page.get_by_role("button", name="Create feature").click()
    assert page.get_by_text("Feature “Support bot” created.").is_visible()
    feature = Feature.objects.get(tenant=tenant, key="support-bot")

    # A budget for it, seen on the dashboard.
    page.goto(f"{base}/t/acme/budgets/new/")
    page.fill("#id_name", "Support monthly")
    page.select_option("#id_scope", "feature")
    page.select_option("#id_feature", str(feature.pk))
    page.fill("#id_limit_usd", "120")
    page.get_by_role("button", name="Create budget").click()
    assert page.get_by_text("Budget “Support monthly” created.").is_visible()
    budget = Budget.objects.get(tenant=tenant, name="Support monthly")
    assert page.url == f"{base}/t/acme/budgets/{budget.pk.hex}/"
    page.get_by_role("link", name="Dashboard").click()
    row = page.locator(".budget-row", has_text="Support monthly")
    assert row.is_visible()
    assert "of $120.00" in row.inner_text()
    screenshot(page, "dashboard-1440")

    # Edit the limit; the audit history says who changed what, before and after.
    row.get_by_role("link", name="Support monthly").click()
    page.get_by_role("link", name="Edit").click()
    page.fill("#id_limit_usd", "150")
    page.get_by_role("button", name="Save changes").click()
    history = page.locator("table.diff")
    assert re.search(r"limit \(USD\): \$120\.00 → \$150\.00", history.inner_text())
    assert "owner@acme.test" in history.inner_text()
    screenshot(page, "budget-1440")
    narrow = new_page(375, 800)
    sign_in(narrow, base, "owner@acme.test", f"/t/acme/budgets/{budget.pk.hex}/")
    assert no_horizontal_overflow(narrow)
    screenshot(narrow, "budget-375")
    narrow.goto(f"{base}/t/acme/")
    assert no_horizontal_overflow(narrow)
    screenshot(narrow, "dashboard-375")

    # A key: its secret exactly once.
    page.goto(f"{base}/t/acme/keys/")
    page.get_by_role("link", name="Create the first key").click()
    page.fill("#id_name", "support prod")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-secret").inner_text().strip()
    assert secret.startswith("cpt_")
    page.reload()
    assert page.get_by_test_id("new-secret").count() == 0
    assert secret not in page.content()
    page.goto(f"{base}/t/acme/keys/")
    assert secret not in page.content()
    assert secret.split("_")[1] in page.content()  # the prefix stays visible


def test_viewer_cannot_reach_edit_pages_and_outsider_sees_404(live_server, new_page):
    tenant = Tenant.objects.create(slug="acme", name="Acme")
    other = Tenant.objects.create(slug="globex", name="Globex")
    budget = BudgetFactory(tenant=tenant, name="Tenant monthly")
    user_in(tenant, Role.VIEWER, "viewer@acme.test")
    user_in(other, Role.OWNER, "owner@globex.test")
    base = live_server.url

    viewer = new_page()
    sign_in(viewer, base, "viewer@acme.test")
    assert viewer.get_by_text("Tenant monthly").first.is_visible()
    assert viewer.get_by_role("link", name="New budget").count() == 0
    for path in ("/t/acme/budgets/new/", f"/t/acme/budgets/{budget.pk.hex}/edit/", "/t/acme/features/new/",
                 "/t/acme/keys/new/"):
        response = viewer.goto(base + path)
        assert response.status == 403, path
        assert viewer.get_by_role("heading", name="Not allowed").is_visible()

    outsider = new_page()
    sign_in(outsider, base, "owner@globex.test")
    for path in ("/t/acme/", f"/t/acme/budgets/{budget.pk.hex}/", f"/t/globex/budgets/{budget.pk.hex}/"):
        response = outsider.goto(base + path)
        assert response.status == 404, path
        assert outsider.get_by_role("heading", name="Not found").is_visible()


@pytest.mark.parametrize("width", [375, 1440])
def test_fresh_tenant_pages_fit_the_screen_with_empty_states(live_server, new_page, width):
    tenant = Tenant.objects.create(slug="fresh", name="Fresh tenant")
    user_in(tenant, Role.OWNER, "owner@fresh.test")
    base = live_server.url
    page = new_page(width, 800)
    sign_in(page, base, "owner@fresh.test")
    expectations = {
        "/t/fresh/": "No budgets yet",
        "/t/fresh/budgets/": "No budgets yet",
        "/t/fresh/features/": "No features yet",
        "/t/fresh/keys/": "No API keys yet",
        "/t/fresh/alerts/": "No channels yet",
        "/t/fresh/usage/": "No usage matches",
        "/t/fresh/levers/": "No usage in this range",
        "/t/fresh/provider/": "Not connected",
        "/t/fresh/members/": "owner@fresh.test",
    }
    for path, text in expectations.items():
        response = page.goto(base + path)
        assert response.status == 200, path
        assert page.get_by_text(text).first.is_visible(), path
        assert no_horizontal_overflow(page), f"{path} overflows at {width}px"
