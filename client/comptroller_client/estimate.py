"""A local estimate of a Messages request's input tokens, for when count_tokens is not used.

The hold only needs a fair worst case — the commit charges what the call
really used — so the estimate leans high rather than low:

- text (system prompt, message text, tool results, thinking) at
  ``CHARS_PER_TOKEN`` = 3.5 characters per token (Claude's tokenizer averages
  about 3.5–4 characters per token on English prose and code);
- JSON (tool definitions, tool_use inputs, anything unrecognised) serialised
  compactly, at the same rate;
- ``IMAGE_TOKENS`` = 1,600 per image (Anthropic's figure for a ~1.15
  megapixel image, the size beyond which images are downscaled);
- base64 documents (PDFs) at one token per ``BASE64_CHARS_PER_TOKEN`` = 4
  encoded characters, plain-text documents as text;
- ``MESSAGE_OVERHEAD`` = 4 tokens per message for role markers, and
  ``TOOLS_OVERHEAD`` = 350 tokens for the system prompt tool use adds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

CHARS_PER_TOKEN = 3.5
IMAGE_TOKENS = 1600
BASE64_CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
TOOLS_OVERHEAD = 350


def _as_data(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def _json_chars(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))


def _block_tokens(block: Any) -> float:
    block = _as_data(block)
    if isinstance(block, str):
        return len(block) / CHARS_PER_TOKEN
    if not isinstance(block, Mapping):
        return _json_chars(block) / CHARS_PER_TOKEN
    kind = block.get("type")
    if kind == "text":
        return len(block.get("text") or "") / CHARS_PER_TOKEN
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            return len(source.get("data") or "") / BASE64_CHARS_PER_TOKEN
        if source.get("type") == "text":
            return len(source.get("data") or "") / CHARS_PER_TOKEN
        return _json_chars(source) / CHARS_PER_TOKEN
    if kind == "tool_result":
        return _content_tokens(block.get("content"))
    if kind in ("thinking", "redacted_thinking"):
        return len(block.get("thinking") or block.get("data") or "") / CHARS_PER_TOKEN
    if kind == "tool_use":
        return (_json_chars(block.get("input") or {}) + len(block.get("name") or "")) / CHARS_PER_TOKEN
    return _json_chars(block) / CHARS_PER_TOKEN


def _content_tokens(content: Any) -> float:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content) / CHARS_PER_TOKEN
    if isinstance(content, Iterable) and not isinstance(content, Mapping):
        return sum(_block_tokens(b) for b in content)
    return _block_tokens(content)


def estimate_input_tokens(
    *,
    messages: Iterable[Any],
    system: Any = None,
    tools: Iterable[Any] | None = None,
    tool_choice: Any = None,
    **_ignored: Any,
) -> int:
    """Return a (deliberately generous) estimate of the request's input tokens."""
    total = _content_tokens(system)
    for message in messages:
        message = _as_data(message)
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content") if isinstance(message, Mapping) else message)
    tools = list(tools or ())
    if tools:
        total += TOOLS_OVERHEAD + _json_chars([_as_data(t) for t in tools]) / CHARS_PER_TOKEN
    if tool_choice:
        total += _json_chars(_as_data(tool_choice)) / CHARS_PER_TOKEN
    return max(1, math.ceil(total))
