from django.urls import path

from governance.notify.apis import AlertListApi, ChannelDetailApi, ChannelListApi, ChannelTestApi

urlpatterns = [
    path("alert-channels", ChannelListApi.as_view(), name="api-alert-channels"),
    path("alert-channels/<str:channel_id>", ChannelDetailApi.as_view(), name="api-alert-channel"),
    path("alert-channels/<str:channel_id>/test", ChannelTestApi.as_view(), name="api-alert-channel-test"),
    path("alerts", AlertListApi.as_view(), name="api-alerts"),
]
