"""Check a booted production configuration from outside, as a user and a service would.

Run by .ci/prod-boot with BOOT_URL (plain-HTTP address of gunicorn) and BOOT_LOGS. The
load balancer's part is played by the X-Forwarded-Proto header: behind TLS termination
it says "https" (SECURE_PROXY_SSL_HEADER); without it the request is plain HTTP.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from decimal import Decimal

import httpx

BASE = os.environ["BOOT_URL"]
GATEWAY = os.environ.get("GATEWAY_URL", "")
TLS = {"X-Forwarded-Proto": "https"}
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def wait_until_up(client: httpx.Client, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = client.get("/healthz")
            if response.status_code == 200:
                check(response.json()["status"] == "ok", f"/healthz is ok: {response.json()}")
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"gunicorn did not answer /healthz within {seconds:.0f}s")
        time.sleep(0.2)


def is_json_error(response: httpx.Response, status: int, code: str) -> bool:
    if response.status_code != status or response.headers.get("content-type") != "application/json":
        return False
    return response.json().get("error", {}).get("code") == code


def web_checks(client: httpx.Client) -> None:
    page = client.get("/login/", headers=TLS)
    check(page.status_code == 200 and "text/html" in page.headers["content-type"], "sign-in page is 200")
    assets = sorted(set(re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)))
    check(bool(assets), f"sign-in page links static assets: {assets}")
    for asset in assets:
        response = client.get(asset, headers=TLS)
        check(response.status_code == 200 and len(response.content) > 0, f"{asset} is 200")
    plain = client.get("/login/")
    check(
        plain.status_code == 301 and plain.headers.get("location", "").startswith("https://"),
        f"plain-HTTP sign-in redirects to HTTPS ({plain.status_code} {plain.headers.get('location')})",
    )
    docs = client.get("/api/docs/", headers=TLS)
    check(docs.status_code == 200, "/api/docs/ is 200")
    for asset in sorted(set(re.findall(r'(?:href|src)="(/static/[^"]+)"', docs.text))):
        check(client.get(asset, headers=TLS).status_code == 200, f"{asset} (API docs) is 200")
    schema = client.get("/api/schema/", headers={**TLS, "Accept": "application/json"})
    check(schema.status_code == 200 and "paths" in schema.json(), "/api/schema/ is 200")


def api_error_checks(client: httpx.Client) -> None:
    for method in ("GET", "POST"):
        response = client.request(method, "/api/v1/no-such-route", headers=TLS, json={})
        check(is_json_error(response, 404, "not_found"), f"{method} unknown API route is a JSON 404")
    response = client.post("/api/v1/allowances", json={"feature": "x"})
    check(
        is_json_error(response, 403, "https_required")
        and response.json()["error"]["details"]["url"].startswith("https://"),
        "plain-HTTP API call is a JSON 403 https_required naming the HTTPS URL",
    )
    response = client.get("/api/v1/whoami", headers=TLS)
    check(is_json_error(response, 401, "unauthenticated"), "API call without a key is a JSON 401")


def create_tenant_key() -> str:
    """Run the documented command and take the admin key from its last line."""
    out = subprocess.run(
        [sys.executable, "manage.py", "create_tenant", "smoke", "--name", "Smoke", "--timezone", "UTC"],
        check=True, capture_output=True, text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def governed_call(client: httpx.Client) -> tuple[dict, dict]:
    admin = {**TLS, "Authorization": f"Bearer {create_tenant_key()}"}

    def post(path: str, body: dict, headers: dict, status: int) -> dict:
        response = client.post(path, json=body, headers=headers)
        check(response.status_code == status, f"POST {path} is {status} ({response.status_code})")
        if response.status_code != status:
            print(response.text[:500])
            sys.exit(1)
        return response.json()

    post("/api/v1/features", {"key": "smoke-bot", "name": "Smoke bot", "default_model": "claude-sonnet-4-5"},
         admin, 201)
    post("/api/v1/budgets", {"name": "Smoke monthly", "scope": "tenant", "period": "month",
                             "limit_usd": "0.01", "enforcement": "alert", "thresholds": [50]}, admin, 201)
    post("/api/v1/alert-channels", {"name": "Ops", "kind": "email", "email_addresses": ["ops@example.com"]},
         admin, 201)
    secret = post("/api/v1/keys", {"name": "smoke service", "role": "service"}, admin, 201)["secret"]
    service = {**TLS, "Authorization": f"Bearer {secret}"}

    hold = post("/api/v1/allowances", {"feature": "smoke-bot", "model": "claude-sonnet-4-5",
                                       "input_tokens": 1000, "max_tokens": 1000}, service, 201)
    check(hold["decision"] == "granted" and hold["id"].startswith("hold_"), f"allowance granted: {hold['id']}")
    commit = post(f"/api/v1/allowances/{hold['id']}/commit",
                  {"usage": {"input_tokens": 1000, "output_tokens": 800}}, service, 200)
    # Sonnet 4.5: 1,000 × $3/MTok + 800 × $15/MTok.
    check(commit["state"] == "committed" and Decimal(commit["cost_usd"]) == Decimal("0.015"),
          f"commit charged {commit['cost_usd']}")
    budgets = client.get("/api/v1/budgets", headers=service).json()["results"]
    spent = [Decimal(b["spent_usd"]) for b in budgets]
    check(spent == [Decimal("0.015")], f"the budget's window shows the spend: {spent}")

    # The worker evaluates the crossed threshold and delivers the alert by email.
    deadline = time.monotonic() + 30
    deliveries: list = []
    while time.monotonic() < deadline:
        alerts = client.get("/api/v1/alerts", headers=admin).json()["results"]
        deliveries = [d["status"] for a in alerts for d in a["deliveries"]]
        if "sent" in deliveries:
            break
        time.sleep(0.3)
    check("sent" in deliveries, f"the worker raised the threshold alert and sent it: {deliveries}")
    return admin, service


def gateway_checks(client: httpx.Client, admin: dict, service: dict) -> None:
    """The gateway's processes (uvicorn workers): Anthropic's error shape, and a governed call's hold."""
    stored = client.put("/api/v1/provider-connection", json={"inference_api_key": "sk-ant-api03-smoke-00000000"},
                        headers=admin)
    check(stored.status_code == 201 and stored.json()["inference_api_key"] == "…0000",
          f"an admin key stores the gateway's Anthropic key ({stored.status_code})")
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=GATEWAY, timeout=10) as gateway:
        wait_until_up(gateway)
        plain = gateway.post("/anthropic/v1/messages", json=body)
        check(plain.status_code == 403 and plain.json()["error"]["type"] == "permission_error",
              "the gateway over plain HTTP is a 403 in Anthropic's shape")
        anonymous = gateway.post("/anthropic/v1/messages", json=body, headers=TLS)
        check(anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error",
              "the gateway without a key is a 401 in Anthropic's shape")
        key = service["Authorization"].split()[-1]
        call = gateway.post("/anthropic/v1/messages", json=body,
                            headers={**TLS, "x-api-key": key, "x-comptroller-feature": "smoke-bot"})
    # Anthropic is a closed port here: the call is granted, cannot be sent, and its hold is released.
    check(call.status_code == 502 and call.headers.get("x-comptroller-decision") == "granted",
          f"a gateway call is granted, then 502 with Anthropic unreachable ({call.status_code})")
    hold_id = call.headers.get("x-comptroller-hold", "none")
    hold = client.get(f"/api/v1/allowances/{hold_id}", headers=service)
    check(hold.status_code == 200 and hold.json()["state"] == "released", f"its hold {hold_id} is released")


def main() -> None:
    with httpx.Client(base_url=BASE, timeout=10, follow_redirects=False) as client:
        wait_until_up(client)
        web_checks(client)
        api_error_checks(client)
        admin, service = governed_call(client)
        if GATEWAY:
            gateway_checks(client, admin, service)
    if failures:
        sys.exit(f"{len(failures)} production check(s) failed")


if __name__ == "__main__":
    main()
