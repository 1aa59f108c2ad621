"""Threshold, exhaustion and forecast evaluation of budget windows (alerts issue fills this in)."""

from __future__ import annotations


def windows_evaluate_later(window_ids: list[int]) -> None:
    """Enqueue evaluation of these windows after the current transaction commits."""


def window_denied(window_ids: list[int]) -> None:
    """Note that a call was denied on these windows (raises 'exhausted' once per window)."""
