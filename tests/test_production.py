"""The production configuration: JSON errors under /api/ without templates, HTTPS rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client

from tests.conftest import make_client

MANIFEST_STORAGE = "whitenoise.storage.CompressedManifestStaticFilesStorage"


def assert_json_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.fixture
def without_collectstatic(settings, tmp_path):
    """Production static storage with no manifest: what a deploy that skipped collectstatic has."""
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": MANIFEST_STORAGE}}
    settings.STATIC_ROOT = tmp_path


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing-here", "/api/v1/allowances/hold_x/nope", "/api/nothing", "/api/v1/"]
)
def test_unknown_api_route_is_json_404_without_rendering_a_template(
    without_collectstatic, admin_api, path
):
    assert_json_error(admin_api.get(path), 404, "not_found")
    assert_json_error(admin_api.post(path, {}, format="json"), 404, "not_found")


def test_unknown_web_route_still_renders_the_404_page(client, db):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert b"Not found" in response.content


@pytest.fixture
def https_site(settings):
    """The production defaults: the site redirects to HTTPS and the API requires it."""
    settings.SECURE_SSL_REDIRECT = True
    settings.API_REQUIRE_HTTPS = True


def test_plain_http_api_call_is_a_json_403_naming_the_https_url(https_site, admin_api):
    error = assert_json_error(
        admin_api.post("/api/v1/allowances?x=1", {"feature": "a"}, format="json"), 403, "https_required"
    )
    assert error["details"]["url"] == "https://testserver/api/v1/allowances?x=1"
    assert_json_error(admin_api.get("/api/v1/whoami"), 403, "https_required")
    assert_json_error(admin_api.get("/api/schema/"), 403, "https_required")


def test_api_call_through_a_tls_proxy_is_served(https_site, admin_api):
    response = admin_api.get("/api/v1/whoami", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response.json()["tenant"] == "acme"
    assert_json_error(make_client(None).get("/api/v1/whoami", secure=True), 401, "unauthenticated")


def test_web_ui_still_redirects_to_https(https_site, db):
    response = Client().get("/login/")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/login/"
    assert Client().get("/login/", secure=True).status_code == 200


def test_healthz_answers_plain_http(https_site, db):
    assert Client().get("/healthz").status_code in (200, 503)


def test_plain_http_api_is_served_when_api_require_https_is_off(https_site, settings, admin_api):
    settings.API_REQUIRE_HTTPS = False
    response = admin_api.get("/api/v1/whoami")
    assert response.status_code == 200
    assert Client().get("/login/").status_code == 301


ROOT = Path(__file__).resolve().parent.parent
SETTING_READ = re.compile(r"""\benv(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]+)["']|os\.environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_every_setting_read_from_the_environment_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    read = set()
    for source in ("governance/settings.py", "gunicorn.conf.py"):
        for match in SETTING_READ.finditer((ROOT / source).read_text()):
            read.add(match.group(1) or match.group(2))
    read.discard("DJANGO_SETTINGS_MODULE")
    assert read > {"DATABASE_URL", "API_REQUIRE_HTTPS", "WEB_CONCURRENCY"}
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert not missing, f"settings missing from the README's Configuration table: {missing}"


def test_readme_and_docs_link_only_to_files_in_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {p.name for p in pages} >= {"api.md", "deploy.md", "client.md", "design.md"}
    for page in pages:
        text = page.read_text()
        assert "shared/" not in text and "CONTRACT.md" not in text, page
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
