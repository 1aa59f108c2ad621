"""A local OpenID Connect provider on pytest-httpserver: discovery, authorize, token, JWKS, userinfo.

``/authorize`` signs in ``OidcStub.person`` at once (no login form) and sends the browser
back with a code; ``/token`` checks the client, the code, the redirect URI and the PKCE
verifier, and answers an RS256 ID token carrying the nonce it was given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug import Request, Response

CLIENT_ID = "comptroller-test"
CLIENT_SECRET = "stub-client-secret"
KID = "stub-key-1"


@cache
def _signing_key() -> tuple[bytes, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return pem, {**jwk, "kid": KID, "alg": "RS256", "use": "sig"}


@dataclass
class OidcStub:
    server: Any
    person: dict[str, Any] = field(default_factory=lambda: {
        "sub": "user-1", "email": "someone@corp.test", "email_verified": True,
    })
    audience: str = CLIENT_ID
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.server.url_for("/").rstrip("/")

    def install(self) -> OidcStub:
        s = self.server
        s.expect_request("/.well-known/openid-configuration").respond_with_handler(self._discovery)
        s.expect_request("/authorize").respond_with_handler(self._authorize)
        s.expect_request("/token", method="POST").respond_with_handler(self._token)
        s.expect_request("/jwks").respond_with_handler(self._jwks)
        s.expect_request("/userinfo").respond_with_handler(self._userinfo)
        return self

    def _json(self, body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status=status, content_type="application/json")

    def _discovery(self, request: Request) -> Response:
        return self._json({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        })

    def _authorize(self, request: Request) -> Response:
        args = request.args
        if args.get("client_id") != CLIENT_ID or args.get("response_type") != "code":
            return self._json({"error": "unauthorized_client"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": args["redirect_uri"], "nonce": args.get("nonce"),
            "challenge": args.get("code_challenge"), "person": dict(self.person),
        }
        location = f"{args['redirect_uri']}?{urlencode({'code': code, 'state': args['state']})}"
        return Response(status=302, headers={"Location": location})

    def _token(self, request: Request) -> Response:
        form = request.form
        grant = self.codes.pop(form.get("code", ""), None)
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET) or grant is None:
            return self._json({"error": "invalid_grant"}, 400)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if form.get("redirect_uri") != grant["redirect_uri"] or challenge != grant["challenge"]:
            return self._json({"error": "invalid_grant"}, 400)
        pem, _ = _signing_key()
        now = int(time.time())
        person = grant["person"]
        id_token = jwt.encode(
            {"iss": self.issuer, "sub": person["sub"], "aud": self.audience, "iat": now, "exp": now + 300,
             "nonce": grant["nonce"], "email": person["email"]},
            pem, algorithm="RS256", headers={"kid": KID},
        )
        access_token = secrets.token_urlsafe(16)
        self.tokens[access_token] = person
        return self._json({"access_token": access_token, "token_type": "Bearer", "id_token": id_token,
                           "expires_in": 300})

    def _jwks(self, request: Request) -> Response:
        return self._json({"keys": [_signing_key()[1]]})

    def _userinfo(self, request: Request) -> Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        person = self.tokens.get(token)
        if person is None:
            return self._json({"error": "invalid_token"}, 401)
        return self._json(person)


def configure(settings, stub: OidcStub) -> None:
    """Point the app's SSO settings at the stub (``settings`` is pytest-django's fixture)."""
    from governance.web import sso

    settings.OIDC_ISSUER = stub.issuer
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_PROVIDER_NAME = "Stub IdP"
    sso._discovery.clear()
