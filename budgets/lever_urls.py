from django.urls import path

from budgets.lever_apis import LeverBoardApi

urlpatterns = [
    path("levers", LeverBoardApi.as_view(), name="api-levers"),
]
