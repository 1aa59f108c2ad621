"""Settings for Comptroller, read from the environment (see README, Configuration)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import cast

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
# The embedded default keeps its SQLite file, file broker and logs here.
for _folder in ("broker/out", "broker/processed", "broker/control", "log"):
    (VAR_DIR / _folder).mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# Production secrets have no default; the embedded default (DEBUG on) gets a local one.
SECRET_KEY = env("SECRET_KEY") if not DEBUG else env("SECRET_KEY", default="dev-insecure-key")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "governance",
    "usage",
    "usage.provider",
    "budgets",
    "governance.notify",
]

# governance.middleware.Web*: the web UI's middleware (WhiteNoise's, Django's), which /api/
# requests go past: they carry a bearer key, never a cookie or a session.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "governance.middleware.WebWhiteNoiseMiddleware",
    "governance.middleware.ApiHttpsMiddleware",
    "governance.middleware.RejectNulMiddleware",
    "governance.middleware.ApiErrorMiddleware",
    "governance.middleware.WebSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Django's own: check --deploy (security.W003) knows only it, and every API view is CSRF-exempt.
    "django.middleware.csrf.CsrfViewMiddleware",
    "governance.middleware.WebAuthenticationMiddleware",
    "governance.middleware.WebMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "governance.urls"
WSGI_APPLICATION = "governance.wsgi.application"
ASGI_APPLICATION = "governance.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Timeouts: a stalled PostgreSQL or Redis costs a request seconds, never a hang ----------
# PostgreSQL: connect_timeout, statement_timeout, and a client-side deadline a little past it
# for a server that stops answering (governance/postgresql). 0 turns the statement timeout off
# (e.g. for a long migration). Redis: connect and per-operation socket timeouts.
DB_CONNECT_TIMEOUT = env.int("DB_CONNECT_TIMEOUT", default=3)
DB_STATEMENT_TIMEOUT = env.float("DB_STATEMENT_TIMEOUT", default=5.0)
REDIS_CONNECT_TIMEOUT = env.float("REDIS_CONNECT_TIMEOUT", default=2.0)
REDIS_TIMEOUT = env.float("REDIS_TIMEOUT", default=2.0)

# --- Database -------------------------------------------------------------
# Default: a SQLite file, opened with BEGIN IMMEDIATE so concurrent writers
# queue on the write lock instead of failing with "database is locked".
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'comptroller.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    DATABASES["default"].setdefault("TEST", {})["NAME"] = env(
        "SQLITE_TEST_NAME", default=str(VAR_DIR / "test.sqlite3")
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django turns prepared statements off (for PgBouncer before 1.21). Its own queries
        # bind on the client and are never prepared either way; only statements that ask
        # for it (the allowance's decision, see budgets/reserve.py) are, once per
        # connection. Set DB_PREPARED_STATEMENTS=0 behind a pooler that cannot keep them.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
            "prepare_threshold", 1_000_000 if env.bool("DB_PREPARED_STATEMENTS", default=True) else None
        )
        DATABASES["default"]["ENGINE"] = "governance.postgresql"  # Django's, with a deadline on waits
        _options = DATABASES["default"]["OPTIONS"]
        _options.setdefault("connect_timeout", DB_CONNECT_TIMEOUT)
        if DB_STATEMENT_TIMEOUT > 0:
            _options["options"] = (
                f"{_options.get('options', '')} -c statement_timeout={int(DB_STATEMENT_TIMEOUT * 1000)}".strip()
            )
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker and cache ---------------------------------------
REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    # Redis accelerates; it is never needed to answer: while it is unreachable each process
    # uses its own memory (governance/shared_cache.py) and /healthz says so.
    CACHES = {
        "default": {
            "BACKEND": "governance.shared_cache.FallbackRedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": REDIS_CONNECT_TIMEOUT, "socket_timeout": REDIS_TIMEOUT},
        }
    }
    CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
    # A dead broker must cost a web request seconds, not tens of seconds: commits and
    # allowances enqueue after they commit, and a lost task is picked up by the beat sweep.
    # Workers block on the broker for a second at a time, so its read timeout stays above that.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT, "socket_timeout": max(REDIS_TIMEOUT, 5.0),
    }
else:
    CACHES = {"default": {"BACKEND": "governance.shared_cache.LocalCache"}}
    # A broker that needs no server: messages are files in var/broker. The host is a
    # placeholder the transport ignores; without one kombu warns that it is missing.
    CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://localhost//")
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(VAR_DIR / "broker" / "out"),
        "data_folder_out": str(VAR_DIR / "broker" / "out"),
        "processed_folder": str(VAR_DIR / "broker" / "processed"),
        "control_folder": str(VAR_DIR / "broker" / "control"),
        "store_processed": False,
    }

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5}
CELERY_TIMEZONE = "UTC"

# --- Email -----------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Comptroller <comptroller@localhost>")

# --- Secrets at rest ---------------------------------------------------------
# A Fernet key (or several, comma-separated, newest first, for rotation).
# Without one, a key is derived from SECRET_KEY, which then must never change.
ENCRYPTION_KEYS = env.list("ENCRYPTION_KEYS", default=[])

# --- Anthropic Admin API (provider sync); point elsewhere for tests or air-gapped mirrors.
ANTHROPIC_API_BASE_URL = env("ANTHROPIC_API_BASE_URL", default="https://api.anthropic.com")
# Slack channels may only post to these URL prefixes (the server posts wherever a channel says).
NOTIFY_SLACK_WEBHOOK_PREFIXES = env.list(
    "NOTIFY_SLACK_WEBHOOK_PREFIXES", default=["https://hooks.slack.com/", "https://hooks.slack-gov.com/"]
)

# --- Auth, sessions, security -------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# The web UI redirects to HTTPS; the API never does (see governance.middleware.ApiHttpsMiddleware):
# plain HTTP there is refused with a JSON 403, or served when API_REQUIRE_HTTPS is off.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^api/"]
API_REQUIRE_HTTPS = env.bool("API_REQUIRE_HTTPS", default=SECURE_SSL_REDIRECT)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading is a promise about the whole domain that only its owner can make (and hard to
# undo); the deployment check's advice to turn it on is not a defect of this service.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- API --------------------------------------------------------------------
# The contract's limit: 1 MiB bodies. Django enforces it on request.body, which
# ApiErrorMiddleware reads first for /api/ requests.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
API_RATE_LIMIT = env("API_RATE_LIMIT", default="6000/min")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["governance.api.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "governance.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "governance.api.schema.ComptrollerAutoSchema",
    "UNAUTHENTICATED_USER": None,
    "COERCE_DECIMAL_TO_STRING": True,
}
# The OpenAPI description (/api/schema/); governance/api/schema.py adds tags and errors.
SPECTACULAR_SETTINGS = {
    "TITLE": "Comptroller API",
    "DESCRIPTION": (
        "Budget governance for Claude API spend: ask for an allowance before each model call, "
        "commit what it used after. The reference, with every field, status and error, is "
        "`docs/api.md` in the Comptroller repository.\n\n"
        "Authenticate with `Authorization: Bearer <api key>`. Money is a decimal string in USD, "
        "never a float; times are RFC 3339 UTC. Every error is "
        '`{"error": {"code", "message", "details"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "governance.api.schema.describe_tags",
    ],
    "SORT_OPERATIONS": "governance.api.schema.sort_operations",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # "django" without handlers of its own: Django's default console handler would print
    # each of its lines (the reloader's, for one) a second time beside the root's.
    "loggers": {"django": {"level": "INFO"}, "django.request": {"level": "ERROR"}},
}

# --- Accounts: sign-in throttling, invitations, single sign-on, health details -----------
INSTALLED_APPS += ["axes"]
MIDDLEWARE += [
    "governance.web.auth.PasswordChangeRequiredMiddleware",
    # Turns a locked-out sign-in into its answer; Axes wants it last.
    "axes.middleware.AxesMiddleware",
]
AUTHENTICATION_BACKENDS = [
    "governance.web.throttle.SignInThrottleBackend",  # refuses locked accounts and addresses first
    "django.contrib.auth.backends.ModelBackend",
    "governance.web.sso.SsoBackend",  # inert until OIDC_ISSUER is set
]
# Reverse proxies in front of the app that append the client's address to X-Forwarded-For.
# 0: the client is REMOTE_ADDR. Behind a proxy, leave it at 0 and everyone shares its address.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
SIGNIN_FAILURES_PER_ACCOUNT = env.int("SIGNIN_FAILURES_PER_ACCOUNT", default=10)
SIGNIN_FAILURES_PER_ADDRESS = env.int("SIGNIN_FAILURES_PER_ADDRESS", default=50)
SIGNIN_LOCKOUT_MINUTES = env.int("SIGNIN_LOCKOUT_MINUTES", default=15)
AXES_HANDLER = "governance.web.throttle.SignInAttemptHandler"
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own, with its own limit
AXES_FAILURE_LIMIT = SIGNIN_FAILURES_PER_ACCOUNT
AXES_COOLOFF_TIME = timedelta(minutes=SIGNIN_LOCKOUT_MINUTES)
AXES_CLIENT_IP_CALLABLE = "governance.web.throttle.client_address"
AXES_USERNAME_CALLABLE = "governance.web.throttle.normalized_username"
AXES_LOCKOUT_CALLABLE = "governance.web.throttle.lockout_response"
# A success must not wipe an address's failures: a sprayer with one real account would reset them.
AXES_RESET_ON_SUCCESS = False
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False  # no banner on every manage.py run; failures and lockouts are still logged

INVITATION_TTL_DAYS = env.int("INVITATION_TTL_DAYS", default=7)
INVITATION_EMAIL_TIMEOUT = 10  # seconds for the SMTP server to take an invitation

# Anonymous /healthz callers get the status only; staff and this bearer token get the details.
HEALTHZ_TOKEN = env("HEALTHZ_TOKEN", default="")

# OpenID Connect single sign-on (mozilla-django-oidc); off while OIDC_ISSUER is empty.
OIDC_ISSUER = env("OIDC_ISSUER", default="")
OIDC_RP_CLIENT_ID = env("OIDC_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env("OIDC_CLIENT_SECRET", default="")
OIDC_PROVIDER_NAME = env("OIDC_PROVIDER_NAME", default="single sign-on")
OIDC_RP_SIGN_ALGO = env("OIDC_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = "openid email"
OIDC_USE_PKCE = True
OIDC_TIMEOUT = 10
cast(dict, LOGGING["loggers"])["axes"] = {"level": "WARNING"}  # Axes logs a line per attempt at INFO

# --- The gateway (/anthropic/v1/messages, gateway/): forwarding to ANTHROPIC_API_BASE_URL ----------
# Seconds to connect to Anthropic; between two bytes of its answer (a call that does not stream
# sends nothing until it is done, so minutes); to send a request; to wait for a pooled connection.
GATEWAY_CONNECT_TIMEOUT = env.float("GATEWAY_CONNECT_TIMEOUT", default=10.0)
GATEWAY_READ_TIMEOUT = env.float("GATEWAY_READ_TIMEOUT", default=600.0)
GATEWAY_WRITE_TIMEOUT = env.float("GATEWAY_WRITE_TIMEOUT", default=60.0)
GATEWAY_POOL_TIMEOUT = env.float("GATEWAY_POOL_TIMEOUT", default=10.0)
# Connections to Anthropic per web process: at most, and as many kept open between calls
# (gateway/upstream.py says why there is no separate keep-alive limit).
GATEWAY_MAX_CONNECTIONS = env.int("GATEWAY_MAX_CONNECTIONS", default=200)
GATEWAY_KEEPALIVE_EXPIRY = env.float("GATEWAY_KEEPALIVE_EXPIRY", default=30.0)
# Largest request body the gateway takes (Anthropic's own limit for the Messages API is 32 MB).
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=32 * 1024 * 1024)
# Threads per process for the gateway's database steps (allowance, commit).
GATEWAY_DB_THREADS = env.int("GATEWAY_DB_THREADS", default=8)
# "auto": ask Anthropic's count_tokens (free) when a request holds what cannot be sized locally
# (documents and images by URL or file id, PDFs, ...); "never": hold those at GATEWAY_INPUT_CEILING.
GATEWAY_COUNT_TOKENS = env.str("GATEWAY_COUNT_TOKENS", default="auto")
GATEWAY_INPUT_CEILING = env.int("GATEWAY_INPUT_CEILING", default=200_000)
INSTALLED_APPS += ["gateway"]
SECURE_REDIRECT_EXEMPT += [r"^anthropic/"]  # plain HTTP gets a 403 there, as under /api/, never a 301
