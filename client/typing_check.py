"""Checked by mypy in ``make lint``: governed() keeps the SDK's types, so a typo is caught.

Each ``type: ignore`` below must be needed (``warn_unused_ignores``): if
mypy stopped seeing the error, lint fails.
"""

from __future__ import annotations

import anthropic

from comptroller_client import AsyncComptroller, Comptroller, governed


def check(comptroller: Comptroller, async_comptroller: AsyncComptroller) -> None:
    client = governed(anthropic.Anthropic(), comptroller, feature="support-bot")
    message: anthropic.types.Message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    )
    print(message.usage.output_tokens)
    client.messages.creat(model="claude-sonnet-4-5")  # type: ignore[attr-defined]
    async_client: anthropic.AsyncAnthropic = governed(anthropic.AsyncAnthropic(), async_comptroller, feature="f")
    print(async_client)
