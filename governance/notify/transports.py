"""Delivery of one alert message to one channel: a registry of transports, one per channel kind.

Each transport sends once (no retries of its own) and raises ``TransportError``; the
caller decides about retrying. ``permanent=True`` means trying again cannot help
(the webhook was deleted, the address does not exist), so the channel is marked failing.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.template.loader import render_to_string
from slack_sdk.errors import SlackRequestError
from slack_sdk.webhook import WebhookClient

from governance.notify.models import AlertChannel, ChannelKind

TIMEOUT_SECONDS = 10

# Slack answers these (as the body of a 400/403/404) when a webhook can never work again.
# https://api.slack.com/messaging/webhooks#handling_errors
SLACK_PERMANENT_ERRORS = {
    "invalid_token",
    "no_service",
    "no_service_id",
    "no_team",
    "team_disabled",
    "channel_not_found",
    "channel_is_archived",
    "action_prohibited",
    "posting_to_general_channel_denied",
    "user_not_found",
    "invalid_payload",
}


class TransportError(Exception):
    def __init__(self, message: str, *, permanent: bool = False, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after  # seconds the receiver asked us to wait, if it said


@dataclass(frozen=True)
class Message:
    """What an alert says, independent of the channel that carries it."""

    kind: str
    title: str
    text: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    tenant_name: str = ""


class Transport:
    def __init__(self, channel: AlertChannel) -> None:
        self.channel = channel

    def send(self, message: Message) -> None:
        """Deliver ``message``; return on success, raise TransportError otherwise."""
        raise NotImplementedError


class EmailTransport(Transport):
    def send(self, message: Message) -> None:
        recipients = list(self.channel.email_addresses or [])
        if not recipients:
            raise TransportError("The channel has no email addresses.", permanent=True)
        context = {"message": message, "channel": self.channel}
        email = EmailMultiAlternatives(
            subject=f"[Comptroller] {message.title}"[:250],
            body=render_to_string("notify/alert_email.txt", context),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=recipients,
        )
        email.attach_alternative(render_to_string("notify/alert_email.html", context), "text/html")
        try:
            connection = get_connection(fail_silently=False, timeout=TIMEOUT_SECONDS)
            sent = connection.send_messages([email])
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(sorted(exc.recipients))
            raise TransportError(f"The mail server refused {refused}.", permanent=True) from exc
        except smtplib.SMTPResponseException as exc:
            # 5xx is the server's final word; 4xx (greylisting, full queue) passes.
            reason = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise TransportError(
                f"The mail server answered {exc.smtp_code}: {reason}", permanent=500 <= exc.smtp_code < 600
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransportError(f"Could not reach the mail server: {exc}") from exc
        except ValueError as exc:  # a malformed address or header
            raise TransportError(f"The message could not be built: {exc}", permanent=True) from exc
        if not sent:
            raise TransportError("The mail server accepted no message.")


class SlackTransport(Transport):
    def send(self, message: Message) -> None:
        url = self.channel.slack_webhook_url
        if not url:
            raise TransportError("The channel has no Slack webhook URL.", permanent=True)
        # No retry handlers: retries belong to the delivery task, with backoff and a record.
        client = WebhookClient(url, timeout=TIMEOUT_SECONDS, retry_handlers=[])
        try:
            response = client.send(text=slack_fallback_text(message), blocks=slack_blocks(message))
        except SlackRequestError as exc:
            raise TransportError("The webhook URL is not an http(s) URL.", permanent=True) from exc
        except OSError as exc:  # connection refused, DNS, TLS, timeouts (URLError is one)
            # Never echo the URL: it is the channel's secret.
            reason = getattr(exc, "reason", exc)
            raise TransportError(f"Could not reach Slack: {reason}") from exc
        if response.status_code == 200:
            return
        body = (response.body or "").strip()
        detail = body[:200] if body else "no body"
        message_text = f"Slack answered {response.status_code}: {detail}"
        if response.status_code in (404, 410) or body in SLACK_PERMANENT_ERRORS:
            raise TransportError(message_text, permanent=True)
        if response.status_code == 429:
            raise TransportError(message_text, retry_after=_retry_after(response.headers))
        if response.status_code >= 500:
            raise TransportError(message_text)
        # Other 4xx: the request itself is wrong and resending it cannot help.
        raise TransportError(message_text, permanent=400 <= response.status_code < 500)


def _retry_after(headers) -> int | None:
    value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None)
    try:
        return max(int(str(value).strip()), 0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: our own backoff will do


TRANSPORTS: dict[str, type[Transport]] = {
    ChannelKind.EMAIL: EmailTransport,
    ChannelKind.SLACK: SlackTransport,
}


def transport_for(channel: AlertChannel) -> Transport:
    return TRANSPORTS[channel.kind](channel)


def slack_fallback_text(message: Message) -> str:
    """Return the plain text Slack shows in notifications and where blocks cannot render."""
    return f"{message.title}\n{message.text}".strip()


def _mrkdwn_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_blocks(message: Message) -> list[dict]:
    """Return the Block Kit layout for an alert: header, summary, facts, a link."""
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": message.title[:150], "emoji": True}},
    ]
    if message.text:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn_escape(message.text)[:3000]}}
        )
    if message.fields:
        # Slack allows at most 10 fields per section.
        for start in range(0, len(message.fields), 10):
            blocks.append(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{_mrkdwn_escape(label)}*\n{_mrkdwn_escape(value)}"[:2000]}
                        for label, value in message.fields[start : start + 10]
                    ],
                }
            )
    if message.url:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Comptroller"},
                        "url": message.url,
                    }
                ],
            }
        )
    if message.tenant_name:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Comptroller · {_mrkdwn_escape(message.tenant_name)}"}]}
        )
    return blocks
