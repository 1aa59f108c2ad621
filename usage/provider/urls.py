from django.urls import path

from usage.provider.apis import ProviderConnectionApi, ProviderConnectionTestApi, ReconciliationApi

urlpatterns = [
    path("provider-connection", ProviderConnectionApi.as_view(), name="api-provider-connection"),
    path("provider-connection/test", ProviderConnectionTestApi.as_view(), name="api-provider-connection-test"),
    path("reconciliation", ReconciliationApi.as_view(), name="api-reconciliation"),
]
