"""The API's request parser: JSON, with one input-hygiene check for every endpoint.

JSON can carry text that nothing downstream can keep: ``\\u0000`` (PostgreSQL refuses it in
text and jsonb) and lone UTF-16 surrogates such as ``\\ud800`` (not Unicode: they cannot be
encoded as UTF-8, so storing them, or echoing them in an error, fails). Refusing them here,
with the path of each offending key or value, means no serializer can forget to.
"""

from __future__ import annotations

import json as stdlib_json
import re
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json

# Decoded strictly, a body can only produce these characters through a JSON escape (or, for
# a surrogate, an exotic charset), so bodies without one skip the walk.
_MAYBE_UNFIT = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})|[\x00\ud800-\udfff]")
_UNFIT_CHAR = re.compile("[\x00\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")
MAX_REPORTED = 10
# What json.loads(text, parse_constant=strict_constant) decodes with (stateless, like json's own default decoder).
_STRICT_DECODER = stdlib_json.JSONDecoder(parse_constant=json.strict_constant)


def unfit_char(text: str) -> str | None:
    """Return what makes ``text`` unfit to keep (a NUL or a lone surrogate), or None."""
    found = _UNFIT_CHAR.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "the NUL character (\\u0000)"
    return f"a lone UTF-16 surrogate (\\u{ord(char):04x})"


def _segment(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return f".{key}"
    return f"[{json.dumps(key)}]"  # ensure_ascii: a bad key is shown escaped


def _path(parts: tuple) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else _segment(p) for p in parts)
    return text[1:] if text.startswith(".") else text or "body"


def unfit_strings(data: Any, limit: int = MAX_REPORTED) -> dict[str, list[str]]:
    """Return {path: [problem]} for the first keys and strings in ``data`` that cannot be kept.

    Walks in document order without recursion, so the first problem named is the first in
    the body (the lowest batch index).
    """
    problems: dict[str, list[str]] = {}
    pending: list[tuple[Any, tuple]] = [(data, ())]
    while pending and len(problems) < limit:
        item, parts = pending.pop()
        if isinstance(item, str):
            found = unfit_char(item)
            if found:
                problems[_path(parts)] = [f"Must not contain {found}."]
        elif isinstance(item, dict):
            children = []
            for key, value in item.items():
                found = unfit_char(key)
                if found:
                    problems[_path((*parts, key))] = [f"The key must not contain {found}."]
                children.append((value, (*parts, key)))
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend((child, (*parts, index)) for index, child in reversed(list(enumerate(item))))
    return problems


class JSONParser(parsers.JSONParser):
    """Parse JSON; refuse NUL and lone surrogates anywhere in it; deep nesting is a 400, not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
            if self.strict and not text.startswith("\ufeff"):
                data = _STRICT_DECODER.decode(text)  # json.loads, less the decoder it makes per call
            else:  # json.loads also says what is wrong with a BOM
                data = json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        except (ValueError, LookupError) as exc:  # LookupError: an unknown charset
            raise ParseError(f"JSON parse error - {exc}") from None
        if _MAYBE_UNFIT.search(text):
            problems = unfit_strings(data)
            if problems:
                # Imported here: errors imports DRF's views, which import this module.
                from governance.api.errors import ApiError

                where = ", ".join(problems)
                raise ApiError(
                    f"Invalid text at {where}: JSON strings and keys must not contain NUL (\\u0000) "
                    "or lone UTF-16 surrogates.",
                    details=problems,
                )
        return data
