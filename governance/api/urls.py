from django.urls import path

from governance.api.features import FeatureDetailApi, FeatureListApi, WhoAmIApi
from governance.api.keys import ApiKeyDetailApi, ApiKeyListApi

urlpatterns = [
    path("whoami", WhoAmIApi.as_view(), name="api-whoami"),
    path("features", FeatureListApi.as_view(), name="api-features"),
    path("features/<str:key>", FeatureDetailApi.as_view(), name="api-feature"),
    path("keys", ApiKeyListApi.as_view(), name="api-keys"),
    path("keys/<str:key_id>", ApiKeyDetailApi.as_view(), name="api-key"),
]
