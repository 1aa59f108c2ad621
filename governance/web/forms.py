"""Forms of the web UI: they parse and check input; services decide and write."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError

from budgets.models import Enforcement, Period, Scope
from governance.crypto import mask
from governance.models import FailMode, Feature, KeyRole, Role, slug_validator
from governance.notify.models import AlertKind, ChannelKind
from usage.date_range import MAX_RANGE_DAYS, RangeError, resolve_range
from usage.models import NANO, ServiceTier
from usage.pricing import is_on_sale, is_priced, known_families, priced_models
from usage.provider import checks


def model_choices(*, keep: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Return the models on sale, each by its aliases and its dated id; ``keep`` is added if missing.

    Features store what services send, often an alias ("claude-sonnet-4-5") and sometimes a
    dated id; both must be offered, or a saved value would not be selectable and saving the
    form unchanged would drop it. ``keep`` adds values already saved (a retired model).
    """
    choices: list[tuple[str, str]] = []
    for row in priced_models():
        if not is_on_sale(row):
            continue
        for alias in row.aliases:
            choices.append((alias, f"{row.display_name} ({alias}, the latest snapshot)"))
        choices.append((row.model, f"{row.display_name} ({row.model})"))
    offered = {value for value, _ in choices}
    for value in keep:
        if value and value not in offered:
            choices.append((value, f"{value} (saved; no longer on sale)" if is_priced(value) else value))
            offered.add(value)
    return choices


def apply_service_errors(form: forms.Form, exc: ValidationError, *, renames: dict[str, str] | None = None) -> None:
    """Show a service's validation errors next to the fields they name (the rest on top)."""
    renames = renames or {}
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.message_dict.items():
        field = renames.get(name, name)
        form.add_error(field if field in form.fields else None, errors)


class ModelListField(forms.CharField):
    """An ordered list of model ids typed as text, one per line or comma-separated."""

    def to_python(self, value):
        text = super().to_python(value) or ""
        return [m for m in (part.strip() for part in text.replace("\n", ",").split(",")) if m]

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def validate(self, value):
        unknown = [m for m in value if not is_priced(m)]
        if unknown:
            raise ValidationError(f"No price is known for: {', '.join(unknown)}.")


class FeatureForm(forms.Form):
    key = forms.CharField(
        max_length=63, validators=[slug_validator],
        help_text="What services send as \"feature\", e.g. support-bot. Lowercase letters, digits, - and _.",
    )
    name = forms.CharField(max_length=200)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=5000)
    default_model = forms.ChoiceField(required=False)
    allowed_models = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, help_text="None ticked: any priced model."
    )
    fallback_models = ModelListField(
        required=False, help_text="Cheaper models to try, in order, when a downgrade budget is tight.",
    )
    max_tokens_cap = forms.IntegerField(
        required=False, min_value=1, max_value=10_000_000,
        help_text="The runaway guard: allowances clamp max_tokens to this.",
    )
    interactive = forms.BooleanField(
        required=False, initial=True, help_text="Untick for latency-tolerant work (a batch candidate).",
    )
    fail_mode = forms.ChoiceField(choices=FailMode.choices, initial=FailMode.OPEN,
                                  help_text="What clients do when Comptroller is unreachable.")
    active = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        saved = (self.initial.get("default_model") or "", *(self.initial.get("allowed_models") or []))
        choices = model_choices(keep=tuple(m for m in saved if isinstance(m, str)))
        self.fields["default_model"].choices = [("", "— none —"), *choices]
        self.fields["allowed_models"].choices = choices


class BudgetForm(forms.Form):
    name = forms.CharField(max_length=200)
    scope = forms.ChoiceField(choices=Scope.choices, initial=Scope.TENANT)
    feature: forms.ModelChoiceField[Feature] = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="— every feature —",
        help_text="Required for a feature budget; optional for a run budget.",
    )
    model_families = forms.MultipleChoiceField(
        choices=lambda: [(f, f.title()) for f in known_families()], required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Count only these model families. None ticked: every model.",
    )
    period = forms.ChoiceField(choices=Period.choices, initial=Period.MONTH,
                               help_text="Calendar-aligned in the tenant's time zone; run budgets last a run.")
    limit_usd = forms.DecimalField(
        label="Limit (USD)", required=False, min_value=Decimal("0.000000001"), max_value=1_000_000_000,
        max_digits=19, decimal_places=9,
    )
    limit_tokens = forms.IntegerField(label="Limit (tokens)", required=False, min_value=1,
                                      max_value=10**15)
    enforcement = forms.ChoiceField(choices=Enforcement.choices, initial=Enforcement.BLOCK)
    thresholds = forms.CharField(
        required=False, initial="50, 80, 100", help_text="Alert at these percentages of the limit.",
    )
    forecast_alert = forms.BooleanField(
        required=False, initial=True,
        help_text="Alert when the forecast (this budget's usual weekday and hour pattern, or a spike "
                  "that goes on) ends the window over the limit.",
    )
    active = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, features, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["feature"].queryset = features

    def clean_thresholds(self) -> list[int]:
        text = self.cleaned_data["thresholds"] or ""
        values = []
        for part in text.replace(";", ",").split(","):
            part = part.strip().rstrip("%").strip()
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= 1000:
                raise ValidationError(f"'{part}' is not a whole percentage between 1 and 1000.")
            values.append(int(part))
        return sorted(set(values))

    def clean(self):
        data = super().clean()
        if not self.errors and data.get("limit_usd") is None and data.get("limit_tokens") is None:
            self.add_error("limit_usd", "Set a USD limit, a token limit, or both.")
        if data.get("scope") == Scope.FEATURE and not data.get("feature") and "feature" not in self.errors:
            self.add_error("feature", "A feature budget needs a feature.")
        if data.get("scope") == Scope.TENANT and data.get("feature"):
            self.add_error("feature", "A tenant budget covers every feature; choose “every feature”.")
        return data

    def service_data(self) -> dict:
        """Return the cleaned data as budget service arguments (USD as nano-USD)."""
        data = dict(self.cleaned_data)
        usd = data.pop("limit_usd")
        data["limit_nano"] = None if usd is None else int(usd * NANO)
        return data


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Who uses it, e.g. “support service, production”.")
    role = forms.ChoiceField(
        choices=KeyRole.choices, initial=KeyRole.SERVICE,
        help_text="Service keys ask for allowances and report usage; admin keys also manage over REST.",
    )
    features: forms.ModelMultipleChoiceField[Feature] = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Restrict the key to these features. None ticked: every feature.",
    )

    def __init__(self, *args, features, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["features"].queryset = features


class MemberAddForm(forms.Form):
    # 150: the longest username an account can have, and accounts are named by their address.
    email = forms.EmailField(max_length=150, help_text="They get an email with a link to join; nobody else sees it.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)


class NewAccountForm(forms.Form):
    """The password a newly invited person chooses for their own account."""

    password1 = forms.CharField(label="Choose a password", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label="Repeat it", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def __init__(self, *args, email: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email
        self.fields["password1"].help_text = password_validation.password_validators_help_text_html()

    def clean(self):
        cleaned = super().clean()
        first, second = cleaned.get("password1"), cleaned.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        elif first:
            user = get_user_model()(username=self.email, email=self.email)
            try:
                password_validation.validate_password(first, user)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


def clean_range(form: forms.Form, data: dict, *, today: date, max_days: int = MAX_RANGE_DAYS) -> dict:
    """Fill in the default dates and refuse ranges no report answers (``usage.date_range``)."""
    if "start" in form.errors or "end" in form.errors:
        return data
    try:
        data["start"], data["end"] = resolve_range(
            start=data.get("start"), end=data.get("end"), today=today, max_days=max_days
        )
    except RangeError as exc:
        form.add_error(exc.field, exc.message)
    return data


class UsageFilterForm(forms.Form):
    quiet_optional = True  # every filter is optional; saying so on each is noise
    GROUPS = [("day", "Day"), ("feature", "Feature"), ("model", "Model"), ("service_tier", "Tier")]

    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                          help_text="Inclusive, in the tenant's time zone.")
    feature: forms.ModelChoiceField[Feature] = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="All features", to_field_name="key"
    )
    model = forms.ChoiceField(required=False)
    service_tier = forms.ChoiceField(required=False, choices=[("", "All tiers"), *ServiceTier.choices])
    group_by = forms.MultipleChoiceField(choices=GROUPS, required=False, widget=forms.CheckboxSelectMultiple,
                                         initial=["day", "feature"])
    off_hold = forms.BooleanField(
        required=False, label="Only spend past a limit without a hold",
        help_text="Calls no hold covered that took a block or downgrade budget past its limit.",
    )

    def __init__(self, *args, features, models, today, **kwargs):
        super().__init__(*args, **kwargs)
        self.today = today
        self.fields["feature"].queryset = features
        self.fields["model"].choices = [("", "All models"), *[(m, m) for m in models]]

    def clean(self):
        return clean_range(self, super().clean(), today=self.today)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in (text or "").replace("\n", ",").split(",") if part.strip()]


class ChannelForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(choices=ChannelKind.choices, initial=ChannelKind.EMAIL)
    email_addresses = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Email channels: one or more addresses, one per line or comma-separated.",
    )
    slack_webhook_url = forms.CharField(
        required=False, max_length=500, label="Slack webhook URL",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Slack channels: the incoming-webhook URL. Stored encrypted and never shown again.",
    )
    alert_kinds = forms.MultipleChoiceField(
        choices=AlertKind.choices, required=False, widget=forms.CheckboxSelectMultiple,
        initial=list(AlertKind.values), help_text="Which alerts this channel receives.",
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, channel=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel = channel
        if channel is not None:
            self.fields["kind"].disabled = True
            if channel.slack_webhook_url:
                self.fields["slack_webhook_url"].help_text = (
                    f"Saved: {channel.slack_webhook_hint}. Leave empty to keep it; paste a new URL to replace it."
                )

    def clean_email_addresses(self) -> list[str]:
        return _split_list(self.cleaned_data["email_addresses"])

    def service_data(self) -> dict:
        data = dict(self.cleaned_data)
        if self.channel is not None:
            data.pop("kind", None)
            if not data.get("slack_webhook_url"):
                data.pop("slack_webhook_url", None)  # empty means "keep the saved one"
        return data


class ProviderForm(forms.Form):
    admin_key = forms.CharField(
        required=False, label="Anthropic Admin API key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="sk-ant-admin…; stored encrypted, shown only masked.",
    )
    inference_api_key = forms.CharField(
        required=False, label="Anthropic API key for the gateway",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="sk-ant-api…: what /anthropic/v1/messages calls Anthropic with; stored encrypted.",
    )
    workspace_ids = forms.CharField(
        required=False, help_text="Only sync these workspaces (wrkspc_…), comma-separated; empty: all.",
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, connection=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.connection = connection
        if connection is not None:
            if connection.admin_key:
                self.fields["admin_key"].help_text = (
                    f"Saved: {mask(connection.admin_key)}. Leave empty to keep it; paste a new key to replace it."
                )
            if connection.inference_api_key:
                self.fields["inference_api_key"].help_text = (
                    f"Saved: {mask(connection.inference_api_key)}. Leave empty to keep it; paste a new key to "
                    "replace it."
                )

    def clean(self):
        data = super().clean()
        if self.connection is None and not data.get("admin_key") and not data.get("inference_api_key"):
            raise ValidationError("Give an Admin API key (usage and cost sync), an API key (the gateway), or both.")
        return data

    def clean_inference_api_key(self) -> str:
        key = (self.cleaned_data["inference_api_key"] or "").strip()
        problem = checks.inference_key_problem(key) if key else None
        if problem:
            raise ValidationError(problem)
        return key

    def clean_admin_key(self) -> str:
        key = (self.cleaned_data["admin_key"] or "").strip()
        problem = checks.admin_key_problem(key) if key else None
        if problem:
            raise ValidationError(problem)
        return key

    def clean_workspace_ids(self) -> list[str]:
        ids = _split_list(self.cleaned_data["workspace_ids"])
        problems = [p for p in (checks.workspace_id_problem(w) for w in ids) if p]
        if problems:
            raise ValidationError(problems[:5])
        return ids

    def service_data(self) -> dict:
        data = dict(self.cleaned_data)
        for name in ("admin_key", "inference_api_key"):
            if not data.get(name):
                data[name] = None  # keep the saved key
        return data


class ProviderMappingForm(forms.Form):
    """Which feature each Anthropic API key or workspace's usage belongs to, one ``id = feature`` a line."""

    MAX_LINES = 1000

    mapping = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 4}), label="Attribute to features",
        help_text=(
            "One per line: an Anthropic API key id (apikey_…) or workspace id (wrkspc_…) = feature key. "
            "An API key wins over its workspace. A workspace used by one feature alone is compared with its bill too."
        ),
    )

    def __init__(self, *args, features=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.feature_keys = set(features)

    def clean_mapping(self) -> dict[str, dict[str, str]]:
        mapping: dict[str, dict[str, str]] = {"api_keys": {}, "workspaces": {}}
        lines = (self.cleaned_data["mapping"] or "").splitlines()
        if len([line for line in lines if line.strip()]) > self.MAX_LINES:
            raise ValidationError(f"At most {self.MAX_LINES} lines.")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            provider_id, sep, key = (part.strip() for part in line.partition("="))
            if not sep or not provider_id or not key:
                raise ValidationError(f"Line {number}: write “apikey_… = feature-key”.")
            if provider_id in mapping["api_keys"] or provider_id in mapping["workspaces"]:
                raise ValidationError(f"Line {number}: {provider_id} is mapped twice.")
            if key not in self.feature_keys:
                raise ValidationError(f"Line {number}: no feature “{key}”.")
            if provider_id.startswith("apikey_") and not checks.api_key_id_problem(provider_id):
                mapping["api_keys"][provider_id] = key
            elif provider_id.startswith("wrkspc_") and not checks.workspace_id_problem(provider_id):
                mapping["workspaces"][provider_id] = key
            else:
                raise ValidationError(
                    f"Line {number}: ids are apikey_… or wrkspc_… followed by letters and digits."
                )
        return mapping


class RangeForm(forms.Form):
    quiet_optional = True
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    feature: forms.ModelChoiceField[Feature] = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="All features", to_field_name="key"
    )

    def __init__(self, *args, features, today, **kwargs):
        super().__init__(*args, **kwargs)
        self.today = today
        self.fields["feature"].queryset = features

    def clean(self):
        return clean_range(self, super().clean(), today=self.today)
