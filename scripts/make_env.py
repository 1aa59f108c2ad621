"""Print a .env for the embedded default: DEBUG on, fresh secrets."""

import secrets

from cryptography.fernet import Fernet

print("DEBUG=1")
print(f"SECRET_KEY={secrets.token_urlsafe(50)}")
print(f"ENCRYPTION_KEYS={Fernet.generate_key().decode()}")
