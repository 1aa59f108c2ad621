"""The worst case of a Messages request, priced before the call: what to ask the allowance for.

Pure functions over the request body (a JSON-like mapping), with no HTTP and
no Django, so the server's gateway can size requests exactly as the client
does. The hold must be a true worst case — a call that costs more than its
hold can overspend a ``block`` budget — so every rule leans high, and what
cannot be sized locally is said so (``RequestSize.unsized``) for the caller
to ask ``count_tokens`` (free, exact) or hold at an input ceiling.

Local rules (``estimate_input_tokens``):

- ASCII text at ``CHARS_PER_TOKEN`` = 3 characters per token (Claude's
  tokenizer averages 3.5–4 on prose, nearer 3 on code and JSON);
- every other code point at ``NON_ASCII_TOKENS`` = 2 tokens (a CJK character
  is one or two tokens; accented Latin letters usually merge with their
  word, so European text is over-held). More than ``NON_ASCII_SURE_LIMIT``
  such code points make the estimate unsure, so count_tokens sizes it;
- JSON (tool definitions, tool_use inputs, unknown blocks) serialised
  compactly, as text;
- ``IMAGE_TOKENS`` = 1,600 per base64 image (a ~1.15 megapixel image; larger
  ones are downscaled to it);
- ``MESSAGE_OVERHEAD`` = 4 tokens per message, ``TOOLS_OVERHEAD`` = 350 for
  the tool-use system prompt.

Unsized (``RequestSize.unsized`` names each): documents and images by URL or
``file_id``, base64 PDFs (pages cost text plus an image each, which their
byte size does not tell), container uploads, MCP servers, non-ASCII-heavy
text. Server tools add input *during* the call: ``web_search`` up to
``max_uses`` × ``WEB_SEARCH_RESULT_TOKENS``, ``web_fetch`` up to ``max_uses``
× ``max_content_tokens``; without those bounds (and for code execution)
the growth is unbounded and only an input ceiling can hold it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 3.0
NON_ASCII_TOKENS = 2
NON_ASCII_SURE_LIMIT = 2000
IMAGE_TOKENS = 1600
MESSAGE_OVERHEAD = 4
TOOLS_OVERHEAD = 350
WEB_SEARCH_RESULT_TOKENS = 10_000  # one search's results, as they enter the context
DEFAULT_MAX_WEB_SEARCHES = 10  # a web_search tool without max_uses
DEFAULT_INPUT_CEILING = 200_000  # the standard context window: the most one request can carry

SERVER_TOOL_PREFIXES = ("web_search_", "web_fetch_", "code_execution_")


def _as_data(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class _Sizer:
    """Walks a request body once, adding up tokens and noting what it cannot size."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.non_ascii = 0
        self.unsized: list[str] = []

    def text(self, value: str) -> None:
        ascii_chars = len(value.encode("ascii", "ignore"))
        others = len(value) - ascii_chars
        self.non_ascii += others
        self.tokens += ascii_chars / CHARS_PER_TOKEN + others * NON_ASCII_TOKENS

    def note(self, reason: str) -> None:
        if reason not in self.unsized:
            self.unsized.append(reason)

    def content(self, content: Any) -> None:
        content = _as_data(content)
        if content is None:
            return
        if isinstance(content, str):
            self.text(content)
        elif isinstance(content, Mapping):
            self.block(content)
        elif isinstance(content, Iterable):
            for block in content:
                self.block(_as_data(block))
        else:
            self.text(_json_text(content))

    def block(self, block: Any) -> None:
        if isinstance(block, str):
            self.text(block)
            return
        if not isinstance(block, Mapping):
            self.text(_json_text(block))
            return
        kind = block.get("type")
        if kind == "text":
            self.text(str(block.get("text") or ""))
        elif kind == "image":
            source = _as_data(block.get("source")) or {}
            if source.get("type") == "base64":
                self.tokens += IMAGE_TOKENS
            else:
                self.note(f"image_{source.get('type') or 'unknown'}")
        elif kind == "document":
            self.document(_as_data(block.get("source")) or {})
            for key in ("title", "context"):
                if block.get(key):
                    self.text(str(block[key]))
        elif kind in ("tool_result", "search_result", "web_search_tool_result", "web_fetch_tool_result"):
            self.content(block.get("content"))
            for key in ("title", "source"):
                if isinstance(block.get(key), str):
                    self.text(block[key])
        elif kind in ("thinking", "redacted_thinking"):
            self.text(str(block.get("thinking") or block.get("data") or ""))
        elif kind in ("tool_use", "server_tool_use"):
            self.text(_json_text(block.get("input") or {}) + str(block.get("name") or ""))
        elif kind == "container_upload":
            self.note("container_upload")
        else:
            self.text(_json_text(block))

    def document(self, source: Mapping[str, Any]) -> None:
        kind = source.get("type")
        if kind == "text":
            self.text(str(source.get("data") or ""))
        elif kind == "content":
            self.content(source.get("content"))
        elif kind == "base64":
            self.note("document_pdf")
            # A page is its text plus an image; a PDF's bytes hold at least a few hundred per page.
            self.tokens += len(str(source.get("data") or "")) / 4
        else:
            self.note(f"document_{kind or 'unknown'}")


def estimate_input_tokens(
    *,
    messages: Iterable[Any],
    system: Any = None,
    tools: Iterable[Any] | None = None,
    tool_choice: Any = None,
    **_ignored: Any,
) -> int:
    """Return the local (deliberately generous) estimate of a request's prompt tokens."""
    return size_request({"messages": messages, "system": system, "tools": tools,
                         "tool_choice": tool_choice}).input_tokens


@dataclass(frozen=True)
class RequestSize:
    """What the local rules make of a request, before anything is asked."""

    input_tokens: int  # the prompt as sent, by the local rules
    unsized: tuple[str, ...] = ()  # what the local rules cannot size: ask count_tokens, or hold a ceiling
    server_tools: tuple[str, ...] = ()
    tool_growth: int | None = 0  # input server tools may add during the call; None = unbounded
    max_web_searches: int = 0
    cache_ttl: str | None = None  # "5m" or "1h" when the request writes to the prompt cache

    @property
    def sure(self) -> bool:
        """True when the local estimate is taken as an upper bound of the whole call's input."""
        return not self.unsized and self.tool_growth == 0


def size_request(body: Mapping[str, Any]) -> RequestSize:
    """Size a Messages request body (``POST /v1/messages``) by the local rules."""
    sizer = _Sizer()
    sizer.content(body.get("system"))
    messages = [_as_data(m) for m in body.get("messages") or ()]
    for message in messages:
        sizer.tokens += MESSAGE_OVERHEAD
        sizer.content(message.get("content") if isinstance(message, Mapping) else message)
    tools = [_as_data(t) for t in body.get("tools") or ()]
    if tools:
        sizer.tokens += TOOLS_OVERHEAD
        sizer.text(_json_text(tools))
    if body.get("tool_choice"):
        sizer.text(_json_text(_as_data(body["tool_choice"])))
    if sizer.non_ascii > NON_ASCII_SURE_LIMIT:
        sizer.note("non_ascii_text")
    if body.get("mcp_servers"):
        sizer.note("mcp_servers")

    server_tools: list[str] = []
    growth: int | None = 0
    searches = 0
    for tool in tools:
        kind = str(tool.get("type") or "") if isinstance(tool, Mapping) else ""
        if not kind.startswith(SERVER_TOOL_PREFIXES):
            continue
        server_tools.append(kind)
        uses = tool.get("max_uses")
        if kind.startswith("web_search_"):
            allowed = int(uses) if uses is not None else DEFAULT_MAX_WEB_SEARCHES
            searches += allowed
            added: int | None = allowed * WEB_SEARCH_RESULT_TOKENS
        elif kind.startswith("web_fetch_") and uses is not None and tool.get("max_content_tokens"):
            added = int(uses) * int(tool["max_content_tokens"])
        else:
            added = None  # code execution output, or fetches without bounds
        growth = None if growth is None or added is None else growth + added
    return RequestSize(
        input_tokens=max(1, math.ceil(sizer.tokens)),
        unsized=tuple(sizer.unsized),
        server_tools=tuple(server_tools),
        tool_growth=growth,
        max_web_searches=searches,
        cache_ttl=_cache_ttl(body, messages, tools),
    )


def _cache_ttl(body: Mapping[str, Any], messages: list[Any], tools: list[Any]) -> str | None:
    """Return "1h" or "5m" when any cache_control is set (the longer TTL wins: it costs more)."""
    ttls: set[str] = set()

    def visit(value: Any) -> None:
        value = _as_data(value)
        if isinstance(value, Mapping):
            control = value.get("cache_control")
            if isinstance(control, Mapping):
                ttls.add(str(control.get("ttl") or "5m"))
            for child in value.values():
                if isinstance(child, (list, tuple, Mapping)):
                    visit(child)
        elif isinstance(value, (list, tuple)):
            for child in value:
                visit(child)

    visit({"cache_control": body.get("cache_control")} if body.get("cache_control") else {})
    visit(body.get("system"))
    visit(messages)
    visit(tools)
    if not ttls:
        return None
    return "1h" if "1h" in ttls else "5m"


@dataclass(frozen=True)
class WorstCase:
    """What a call may cost at most, as the allowance's fields.

    ``basis`` says where ``input_tokens`` came from: ``estimate`` (the local
    rules), ``count_tokens`` (counted by Anthropic) or ``ceiling`` (the
    request could not be sized, or server tools may grow it without bound).
    """

    input_tokens: int
    max_tokens: int
    basis: str = "estimate"
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    max_web_searches: int = 0
    inference_geo: str | None = None
    speed: str | None = None

    def allowance_fields(self) -> dict[str, Any]:
        """Return the ``POST /api/v1/allowances`` fields this worst case sets (defaults left out)."""
        fields: dict[str, Any] = {"input_tokens": self.input_tokens, "max_tokens": self.max_tokens}
        optional = {
            "cache_write_5m_tokens": self.cache_write_5m_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "max_web_searches": self.max_web_searches,
            "inference_geo": None if self.inference_geo in (None, "global") else self.inference_geo,
            "speed": None if self.speed in (None, "standard") else self.speed,
        }
        fields.update({k: v for k, v in optional.items() if v})
        return fields


def worst_case(
    body: Mapping[str, Any],
    *,
    size: RequestSize | None = None,
    counted_input_tokens: int | None = None,
    input_ceiling: int | None = None,
) -> WorstCase:
    """Return the worst case of a Messages request.

    ``counted_input_tokens`` is Anthropic's ``count_tokens`` answer for the
    request, when asked; ``input_ceiling`` the most input the caller allows a
    request it cannot size (``DEFAULT_INPUT_CEILING`` when not given).
    Everything a cache write may cost is held at the write's rate: with any
    ``cache_control``, all of the input counts as written (1 h if any
    breakpoint asks for 1 h).
    """
    size = size if size is not None else size_request(body)
    ceiling = input_ceiling if input_ceiling is not None else DEFAULT_INPUT_CEILING
    prompt = counted_input_tokens if counted_input_tokens is not None else size.input_tokens
    basis = "count_tokens" if counted_input_tokens is not None else "estimate"
    if size.unsized and counted_input_tokens is None and prompt < ceiling:
        prompt, basis = ceiling, "ceiling"
    if size.tool_growth is None:
        total = max(prompt, ceiling)
        basis = "ceiling" if total > prompt else basis
    else:
        total = prompt + size.tool_growth
    return WorstCase(
        input_tokens=total,
        max_tokens=int(body.get("max_tokens") or 0),
        basis=basis,
        cache_write_5m_tokens=total if size.cache_ttl == "5m" else 0,
        cache_write_1h_tokens=total if size.cache_ttl == "1h" else 0,
        max_web_searches=size.max_web_searches,
        inference_geo=body.get("inference_geo"),
        speed=body.get("speed"),
    )


MIN_OUTPUT_RATE = 20  # tokens per second: slower than any model generates, so the hold outlives the call
DEFAULT_TTL = 600  # the server's default hold TTL
SERVER_TOOL_SECONDS = 60  # each search or fetch may take this long on top


def expected_ttl_seconds(body: Mapping[str, Any], size: RequestSize | None = None) -> int | None:
    """Return a hold TTL long enough for the call, when the server's 600 s default may be too short.

    A call generating ``max_tokens`` at ``MIN_OUTPUT_RATE``, plus a minute,
    plus ``SERVER_TOOL_SECONDS`` per allowed web search; None when 600 s is
    enough. Capped at the contract's 90,000 s.
    """
    size = size if size is not None else size_request(body)
    seconds = 60 + int(body.get("max_tokens") or 0) / MIN_OUTPUT_RATE
    seconds += SERVER_TOOL_SECONDS * (size.max_web_searches + len(size.server_tools))
    if seconds <= DEFAULT_TTL:
        return None
    return min(90_000, math.ceil(seconds))
