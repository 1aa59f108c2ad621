from django.urls import path

from budgets import apis

urlpatterns = [
    path("allowances", apis.allowance_view, name="api-allowances"),
    path("allowances/<str:hold_id>", apis.AllowanceDetailApi.as_view(), name="api-allowance"),
    path("allowances/<str:hold_id>/commit", apis.commit_view, name="api-allowance-commit"),
    path("allowances/<str:hold_id>/release", apis.AllowanceReleaseApi.as_view(), name="api-allowance-release"),
    path("budgets", apis.BudgetListApi.as_view(), name="api-budgets"),
    path("budgets/<str:budget_id>", apis.BudgetDetailApi.as_view(), name="api-budget"),
]
