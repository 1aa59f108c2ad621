from django.urls import path

from usage.provider.apis import ProviderConnectionApi, ReconciliationApi

urlpatterns = [
    path("provider-connection", ProviderConnectionApi.as_view(), name="api-provider-connection"),
    path("reconciliation", ReconciliationApi.as_view(), name="api-reconciliation"),
]
