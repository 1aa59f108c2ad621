from django.urls import path, re_path

from gateway import views

app_name = "gateway"

urlpatterns = [
    path("anthropic/v1/messages", views.messages, name="messages"),
    path("anthropic/v1/messages/count_tokens", views.count_tokens, name="count-tokens"),
    re_path(r"^anthropic(?:/(?P<rest>.*))?$", views.other, name="other"),
]
