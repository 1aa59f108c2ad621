"""Forms of the web UI: they parse and check input; services decide and write."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from budgets.models import Enforcement, Period, Scope
from governance.models import FailMode, KeyRole, Role, slug_validator
from usage.models import NANO, ModelFamily, ServiceTier
from usage.pricing import is_priced, priced_models


def model_choices() -> list[tuple[str, str]]:
    return [(row.model, f"{row.display_name} ({row.model})") for row in priced_models() if not row.retired]


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
        choices = model_choices()
        self.fields["default_model"].choices = [("", "— none —"), *choices]
        self.fields["allowed_models"].choices = choices


class BudgetForm(forms.Form):
    name = forms.CharField(max_length=200)
    scope = forms.ChoiceField(choices=Scope.choices, initial=Scope.TENANT)
    feature = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="— every feature —",
        help_text="Required for a feature budget; optional for a run budget.",
    )
    model_families = forms.MultipleChoiceField(
        choices=ModelFamily.choices, required=False, widget=forms.CheckboxSelectMultiple,
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
    forecast_alert = forms.BooleanField(required=False, initial=True,
                                        help_text="Alert when the burn rate will exceed the limit.")
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
    features = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Restrict the key to these features. None ticked: every feature.",
    )

    def __init__(self, *args, features, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["features"].queryset = features


class MemberAddForm(forms.Form):
    email = forms.EmailField(help_text="An existing user joins; a new address gets an account.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class UsageFilterForm(forms.Form):
    GROUPS = [("day", "Day"), ("feature", "Feature"), ("model", "Model"), ("service_tier", "Tier")]

    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                          help_text="Inclusive, in the tenant's time zone.")
    feature = forms.ModelChoiceField(queryset=None, required=False, empty_label="All features",
                                     to_field_name="key")
    model = forms.ChoiceField(required=False)
    service_tier = forms.ChoiceField(required=False, choices=[("", "All tiers"), *ServiceTier.choices])
    group_by = forms.MultipleChoiceField(choices=GROUPS, required=False, widget=forms.CheckboxSelectMultiple,
                                         initial=["day", "feature"])

    def __init__(self, *args, features, models, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["feature"].queryset = features
        self.fields["model"].choices = [("", "All models"), *[(m, m) for m in models]]

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            self.add_error("end", "The end must not be before the start.")
        if start and end and (end - start).days > 366 * 2:
            self.add_error("start", "Choose at most two years.")
        return data
