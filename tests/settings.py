"""Test settings: production settings with test-only secrets and fast hashing."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("SESSION_COOKIE_SECURE", "0")
os.environ.setdefault("CSRF_COOKIE_SECURE", "0")
os.environ.setdefault("ENCRYPTION_KEYS", "sVBAgZ8U2zGqIqK4YrSvzm4hAFbhrSs6ZAsLyEYuOjY=")
# The race tests queue hundreds of statements on one row of a shared, busy machine; here the
# statement timeout only has to catch a hang (tests that need a short one set their own).
os.environ.setdefault("DB_STATEMENT_TIMEOUT", "30")

from governance.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = False
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
API_RATE_LIMIT = "100000/min"
