import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
django.setup(set_prefix=False)  # what django.core.wsgi.get_wsgi_application does first

from governance.hot_handler import HotPathHandler  # noqa: E402  # needs the app registry

# Django's WSGIHandler with the allowance and its commit past the middleware chain (governance/hot_handler.py).
application = HotPathHandler()
