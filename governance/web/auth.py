"""Sign-in, sign-out and password pages; a one-time password must be replaced before anything else.

Failed sign-ins are counted and locked out by django-axes (see ``governance.web.throttle``),
on this page and on Django admin's login alike.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.shortcuts import redirect
from django.urls import reverse

from governance import services
from governance.models import OneTimePassword
from governance.web import sso

SESSION_MUST_CHANGE_PASSWORD = "must_change_password"
PASSWORD_BACKEND = "django.contrib.auth.backends.ModelBackend"


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["sso"] = sso.provider_name() if sso.enabled() else None
        return context


class OwnPasswordForm(PasswordChangeForm):
    """Django's password change form, refusing the old password as the new one."""

    def clean_new_password1(self):
        password = self.cleaned_data.get("new_password1")
        if password and self.user.check_password(password):
            raise forms.ValidationError("Choose a password different from the current one.", code="password_unchanged")
        return password


class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = OwnPasswordForm
    success_url = "/account/password/done/"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["must_change"] = bool(self.request.session.get(SESSION_MUST_CHANGE_PASSWORD))
        return context

    def form_valid(self, form):
        response = super().form_valid(form)
        services.password_chosen(user=form.user)
        if self.request.session.pop(SESSION_MUST_CHANGE_PASSWORD, None):
            messages.success(self.request, "Your own password is set. Welcome to Comptroller.")
            return redirect(settings.LOGIN_REDIRECT_URL)
        return response


@receiver(user_logged_in, dispatch_uid="governance-one-time-password")
def _flag_one_time_password(sender, request, user, **kwargs) -> None:
    """A password sign-in with a password someone else chose must replace it first."""
    if request is None or getattr(user, "backend", PASSWORD_BACKEND) != PASSWORD_BACKEND:
        return
    if OneTimePassword.objects.filter(user=user).exists():
        request.session[SESSION_MUST_CHANGE_PASSWORD] = True


class PasswordChangeRequiredMiddleware:
    """Send a user signed in with a one-time password to the password change page, from every page."""

    ALLOWED = ("/account/password/", "/logout/", "/static/", "/healthz", "/api/")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = getattr(request, "session", None)
        if (
            session is not None
            and session.get(SESSION_MUST_CHANGE_PASSWORD)
            and request.user.is_authenticated
            and not request.path.startswith(self.ALLOWED)
        ):
            return redirect(reverse("password_change"))
        return self.get_response(request)
