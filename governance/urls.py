from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from governance.health import healthz

handler400 = "governance.handlers.bad_request"
handler403 = "governance.handlers.permission_denied"
handler404 = "governance.handlers.page_not_found"
handler500 = "governance.handlers.server_error"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # First: the allowance and its commit, asked around every model call, resolve soonest.
    path("api/v1/", include("budgets.urls")),
    path("api/v1/", include("governance.api.urls")),
    path("api/v1/", include("usage.urls")),
    path("api/v1/", include("budgets.lever_urls")),
    path("api/v1/", include("usage.provider.urls")),
    path("api/v1/", include("governance.notify.urls")),
    path("", include("gateway.urls")),
    path("", include("governance.web.urls")),
]
