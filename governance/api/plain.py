"""Plain Django views for the hot endpoints: the allowance asked before every model call, and its commit.

Every other endpoint is a DRF view on ``TenantAPIView``. These two run the same steps
without DRF's per-request machinery (request wrapping, content negotiation, serializer
construction, the renderer): the key is checked by ``ApiKeyAuthentication``, the rate
limit is ``ApiKeyRateThrottle``, the body goes through the API's ``JSONParser`` (input
hygiene included), every error through the API's ``exception_handler``, and a body is
validated by a check compiled from the endpoint's serializer (``FastInput``) that accepts
only what the serializer would accept, returning the same data; anything else is
validated by the serializer itself, so its errors are the serializer's, word for word.

A request these steps do not cover as DRF would (another method, a query string, an
Accept or Content-Type other than plain JSON, an empty body) goes to the DRF view, which
answers it as it always did. The DRF view also stays what the OpenAPI schema describes.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from django.conf import settings
from django.core import validators as django_validators
from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions, serializers
from rest_framework.fields import empty
from rest_framework.utils import encoders
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from budgets.policy import TenantPolicy
from governance.api.authentication import ApiKeyAuthentication
from governance.api.base import TenantAPIView
from governance.api.errors import ApiError, exception_handler
from governance.api.parsers import JSONParser
from governance.api.throttling import ApiKeyRateThrottle
from governance.models import ApiKey, KeyRole, Tenant

JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})
ACCEPT_JSON = frozenset({"*/*", "application/json"})
# DRF's JSONRenderer with this project's settings (UNICODE_JSON, COMPACT_JSON, STRICT_JSON).
_ENCODER = encoders.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def render(data: Any) -> bytes:
    """Return ``data`` as DRF's JSONRenderer renders it here."""
    return _ENCODER.encode(data).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def render_answer(data: Any) -> bytes:
    """Return a hot endpoint's answer byte for byte as ``render`` does, in a fraction of the time.

    The answers are strings, integers, booleans, None and datetimes in dicts and lists:
    orjson writes the first four as DRF's encoder does, and hands datetimes (and anything
    else it does not know) to that encoder. It would write a float in exponent form
    differently, which no answer holds; what it cannot write at all (an integer past 64
    bits, a key that is no string) goes to ``render``.
    """
    try:
        body = orjson.dumps(data, default=_ENCODER.default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:
        return render(data)
    if b"\xe2\x80\xa8" in body or b"\xe2\x80\xa9" in body:  # U+2028, U+2029: escaped, as DRF does
        body = body.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return body


class Fallback(Exception):
    """The input is not one the compiled check is sure of: let the serializer decide."""


# --- a serializer's validation, compiled -------------------------------------------------------


_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class _Field:
    name: str
    convert: Callable[[Any], Any]  # the field's to_internal_value for the inputs it is sure of
    checks: tuple[Callable[[Any], bool], ...]  # each True when the value passes
    validators: tuple[Callable[[Any], Any], ...]  # custom ones, run as DRF runs them
    required: bool
    default: Any
    allow_null: bool


class FastInput:
    """A serializer's validation compiled for the inputs it accepts unchanged.

    ``validate(data)`` returns exactly the serializer's ``validated_data``, or raises
    ``Fallback`` when it cannot be sure (then the serializer decides, and says why).
    Supports the fields the hot endpoints use (CharField, IntegerField, BooleanField,
    ChoiceField, JSONField and nested serializers of them); a serializer with anything
    else always falls back.
    """

    def __init__(self, serializer_class: type[serializers.Serializer]) -> None:
        self.serializer_class = serializer_class
        self.strict = serializer_class.to_internal_value is not serializers.Serializer.to_internal_value
        self.fields: tuple[_Field, ...] | None = None
        self.names: frozenset[str] = frozenset()
        self.template: serializers.Serializer | None = None
        try:
            self.fields = tuple(self._compile(name, field) for name, field in serializer_class._declared_fields.items())
        except Fallback:
            return  # not compiled: every input goes to the serializer
        self.names = frozenset(f.name for f in self.fields)
        if serializer_class.validate is not serializers.Serializer.validate:
            self.template = serializer_class()  # its validate() hook, run on the fields' values

    def _compile(self, name: str, field: serializers.Field) -> _Field:
        if field.read_only or field.source not in (None, name) or hasattr(self.serializer_class, f"validate_{name}"):
            raise Fallback
        kind = type(field)
        checks: list[Callable[[Any], bool]] = []
        custom: list[Callable[[Any], Any]] = []
        for validator in field.validators:
            check = _inline_check(validator)
            if check is not None:
                checks.append(check)
            elif kind is serializers.JSONField:
                custom.append(cast(Callable[[Any], Any], validator))
            else:
                raise Fallback
        convert: Callable[[Any], Any]
        if kind is serializers.CharField:
            convert = _char(cast(serializers.CharField, field))
        elif kind is serializers.IntegerField:
            convert = _typed(int)
        elif kind is serializers.BooleanField:
            convert = _typed(bool)
        elif kind is serializers.ChoiceField:
            convert = _choice(cast(serializers.ChoiceField, field))
        elif kind is serializers.JSONField and not cast(serializers.JSONField, field).binary:
            convert = _json
        elif isinstance(field, serializers.Serializer):  # nested (many=True would be a ListSerializer)
            nested = FastInput(type(field))
            if nested.fields is None:
                raise Fallback
            convert = nested.validate
        else:
            raise Fallback
        return _Field(name=name, convert=convert, checks=tuple(checks), validators=tuple(custom),
                      required=field.required, default=field.default, allow_null=field.allow_null)

    def validate(self, data: Any) -> dict[str, Any]:
        """Return the serializer's validated data for ``data``, or raise Fallback."""
        if self.fields is None or type(data) is not dict:
            raise Fallback
        if self.strict and not self.names.issuperset(data):
            raise Fallback  # unknown fields: the serializer names them
        validated: dict[str, Any] = {}
        for field in self.fields:
            value = data.get(field.name, empty)
            if value is empty:
                if field.required:
                    raise Fallback
                if field.default is empty:
                    continue
                validated[field.name] = field.default() if callable(field.default) else field.default
                continue
            if value is None:
                if not field.allow_null:
                    raise Fallback
                validated[field.name] = None
                continue
            value = field.convert(value)
            for check in field.checks:
                if not check(value):
                    raise Fallback
            for validator in field.validators:
                try:
                    validator(value)
                except Exception:
                    raise Fallback from None
            validated[field.name] = value
        if self.template is not None:
            try:
                validated = self.template.validate(validated)
            except Exception:
                raise Fallback from None
        return validated


def _inline_check(validator: Any) -> Callable[[Any], bool] | None:
    """Return a check that passes exactly the values this built-in validator passes, or None."""
    limit: Any = getattr(validator, "limit_value", None)
    if callable(limit):
        return None
    kind = type(validator)
    if kind is django_validators.MaxLengthValidator:
        return lambda v: len(v) <= limit
    if kind is django_validators.MinLengthValidator:
        return lambda v: len(v) >= limit
    if kind is django_validators.MaxValueValidator:
        return lambda v: v <= limit
    if kind is django_validators.MinValueValidator:
        return lambda v: v >= limit
    if kind is django_validators.ProhibitNullCharactersValidator:
        return lambda v: "\x00" not in str(v)
    if kind is ProhibitSurrogateCharactersValidator:
        return lambda v: _SURROGATE.search(str(v)) is None
    return None


def _typed(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is not kind:  # DRF also takes "12" or 12.0 for 12, and "true" for True
            raise Fallback
        return value

    return convert


def _char(field: serializers.CharField) -> Callable[[Any], Any]:
    allow_blank, trim = field.allow_blank, field.trim_whitespace

    def convert(value: Any) -> Any:
        if type(value) is not str:  # DRF also takes numbers, as their text
            raise Fallback
        if value == "" or (trim and value.strip() == ""):
            if not allow_blank:
                raise Fallback
            return ""
        return value.strip() if trim else value

    return convert


def _choice(field: serializers.ChoiceField) -> Callable[[Any], Any]:
    allow_blank, choices = field.allow_blank, field.choice_strings_to_values

    def convert(value: Any) -> Any:
        if value == "" and allow_blank:
            return ""
        if type(value) is not str or value not in choices:
            raise Fallback
        return choices[value]

    return convert


def _json(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise Fallback from None
    return value


# --- the request ----------------------------------------------------------------------------------


_authentication = ApiKeyAuthentication()


class PlainCall:
    """One authenticated call to a plain view: its key, tenant, policy and body."""

    def __init__(self, request: HttpRequest, key: ApiKey, policy: TenantPolicy) -> None:
        self.request = request
        self.api_key = key
        self.policy = policy
        self._data: Any = empty

    @property
    def tenant(self) -> Tenant:
        return self.api_key.tenant

    @property
    def data(self) -> Any:
        """The parsed JSON body, as DRF's ``request.data`` has it."""
        if self._data is empty:
            request = self.request
            context = {"encoding": request.encoding or settings.DEFAULT_CHARSET}
            self._data = JSONParser().parse(io.BytesIO(request.body), "application/json", context)
        return self._data

    def validate(self, fast: FastInput) -> dict[str, Any]:
        """Return the body validated as ``fast``'s serializer validates it (TenantAPIView.validate)."""
        data = self.data
        try:
            return fast.validate(data)
        except Fallback:
            pass
        serializer = fast.serializer_class(data=data)
        if not isinstance(data, dict):
            raise ApiError("The body must be a JSON object.", details={"body": "expected an object"})
        serializer.is_valid(raise_exception=True)
        return cast(dict[str, Any], serializer.validated_data)


class _Throttled:
    """What ApiKeyRateThrottle reads of a request."""

    def __init__(self, key: ApiKey) -> None:
        self.auth = key


def is_plain(environ: dict[str, Any]) -> bool:
    """Return whether DRF would take this request (its WSGI environ, or request.META) exactly as a plain view does."""
    return (
        environ.get("REQUEST_METHOD", "").upper() == "POST"
        and not environ.get("QUERY_STRING")
        and environ.get("CONTENT_TYPE") in JSON_TYPES
        and environ.get("HTTP_ACCEPT", "*/*") in ACCEPT_JSON
        and environ.get("CONTENT_LENGTH") not in (None, "", "0")
    )


def _is_plain(request: HttpRequest) -> bool:
    return is_plain(request.META)


Handler = Callable[..., tuple[Any, int]]


def plain_view(drf_view: type[TenantAPIView], handler: Handler) -> Callable[..., HttpResponse]:
    """Return a view that answers plain requests with ``handler(call, **kwargs)`` -> (data, status).

    Anything else goes to ``drf_view`` (a TenantAPIView with the service role), which
    also remains the view the OpenAPI schema describes.
    """
    assert drf_view.required_role == KeyRole.SERVICE  # so no role check is needed here
    fallback = drf_view.as_view()
    allow = ", ".join(drf_view().allowed_methods)

    def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        if not _is_plain(request):
            return fallback(request, **kwargs)
        try:
            found = _authentication.authenticate(request)
            key = cast(ApiKey, found[1])
            throttle = ApiKeyRateThrottle()
            if not throttle.allow_request(_Throttled(key), None):
                raise exceptions.Throttled(throttle.wait())
            data, status = handler(PlainCall(request, key, request.tenant_policy), **kwargs)  # type: ignore[attr-defined]
            response = HttpResponse(render_answer(data), status=status, content_type="application/json")
        except Exception as exc:
            response = _error(exc)
        response["Allow"] = allow
        return response

    # What DRF's as_view() leaves on its view: the schema generator finds the DRF view by it.
    view.cls = fallback.cls  # type: ignore[attr-defined]
    view.initkwargs = fallback.initkwargs  # type: ignore[attr-defined]
    view.csrf_exempt = True  # type: ignore[attr-defined]  # bearer keys, no cookies
    view.hot = True  # type: ignore[attr-defined]  # governance.hot_handler answers it past the middleware chain
    return view


def _error(exc: Exception) -> HttpResponse:
    """Answer an exception as a DRF view would (APIView.handle_exception)."""
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        setattr(exc, "auth_header", _authentication.authenticate_header(None))  # noqa: B010  # DRF's own attribute
    answer = exception_handler(exc, {})
    if answer is None:
        raise exc  # a bug: ApiErrorMiddleware answers a JSON 500
    response = HttpResponse(render(answer.data), status=answer.status_code, content_type="application/json")
    for name, value in answer.items():
        if name != "Content-Type":
            response[name] = value
    return response
