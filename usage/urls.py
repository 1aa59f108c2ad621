from django.urls import path

from usage.apis import UsageReportApi, UsageSummaryApi

urlpatterns = [
    path("usage", UsageReportApi.as_view(), name="api-usage"),
    path("usage/summary", UsageSummaryApi.as_view(), name="api-usage-summary"),
]
