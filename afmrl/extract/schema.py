"""The attribute schema: what the generator must write, how it is parsed, and how it is rendered.

``attribute_text`` is THE canonical rendering ("key: value; ...") used for BM25 weights in AGCL,
for enriching queries in RAR and in serving. One function, so every stage sees the same text.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

DEFAULT_ATTRIBUTE_KEYS = ("category", "brand", "colour", "material", "flavour", "variant",
                          "size", "packaging")
MAX_VALUE_CHARS = 48
# The one JSON layout the generator writes: its SFT targets, and the grammar that constrains it
# (vLLM's xgrammar uses these with disable_any_whitespace; serving's TransformersEngine is told).
JSON_SEPARATORS = (",", ":")
MAX_ERROR_CHARS = 300  # one row's error text stays readable, whatever the generator wrote


class AttributeParseError(ValueError):
    """Generator output that does not parse into the attribute schema."""


def json_schema(keys: Sequence[str]) -> dict[str, Any]:
    """JSON schema for structured generation: an object of bounded strings, keys fixed.

    Bounded string lengths matter: a randomly initialised model under a grammar otherwise emits
    characters until ``max_tokens`` (see stack.md).
    """
    return {
        "type": "object",
        "properties": {k: {"type": "string", "maxLength": MAX_VALUE_CHARS} for k in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class ParsedAttributes:
    values: dict[str, str]  # normalised: lower-case, stripped; empty values dropped
    error: str  # "" when the output parsed cleanly

    @property
    def ok(self) -> bool:
        return not self.error


def normalise_value(value: Any) -> str:
    text = "".join(c if c.isprintable() else " " for c in str(value))  # control characters
    text = " ".join(text.split()).strip().lower()
    return text[:MAX_VALUE_CHARS]


JSON_SYNTAX = frozenset("{}[]")


def informative(value: str) -> bool:
    """A value that names something: not empty, not a placeholder, with a letter or digit and
    no JSON syntax in it (a briefly trained generator fills every key with "," or "-", or
    writes fragments such as "}packaging": valid JSON strings that say nothing and must not
    reach a query or a result card)."""
    return (value not in ("none", "null", "unknown", "n/a") and any(c.isalnum() for c in value)
            and JSON_SYNTAX.isdisjoint(value))


def parse_attributes(raw: str, keys: Sequence[str]) -> ParsedAttributes:
    """Parse generator output (a JSON object) against the schema; never raises.

    Unknown keys and non-string values are errors (the output is still partially kept so that
    coverage can be measured); missing keys are allowed (a generator may not know the brand).
    """
    try:  # xgrammar's JSON grammar admits raw control characters in strings: not malformed
        payload = json.loads(raw, strict=False)
    except (json.JSONDecodeError, TypeError, RecursionError) as error:
        reason = error.msg if hasattr(error, "msg") else type(error).__name__
        return ParsedAttributes({}, f"not JSON: {reason}")
    if not isinstance(payload, dict):
        return ParsedAttributes({}, f"expected a JSON object, got {type(payload).__name__}")
    values: dict[str, str] = {}
    problems = []
    for key, value in payload.items():
        if key not in keys:
            problems.append(f"unknown key {key!r}")
            continue
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"{key!r} is not a string")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key!r} is not a finite number")
            continue
        text = normalise_value(value)
        if informative(text):
            values[key] = text
    return ParsedAttributes(values, _bounded("; ".join(problems), len(problems)))


def _bounded(error: str, count: int) -> str:
    if len(error) <= MAX_ERROR_CHARS:
        return error
    head = error[:MAX_ERROR_CHARS - 40].rsplit("; ", 1)[0]
    return f"{head}; ... (+{count - head.count('; ') - 1} more problems)"


def attribute_text(attributes: Mapping[str, str] | str | None,
                   keys: Sequence[str] = DEFAULT_ATTRIBUTE_KEYS) -> str:
    """Canonical text of an attribute dict (or its JSON string): 'key: value; key: value'.

    Keys appear in schema order, so equal attributes always render to equal text.
    """
    if not attributes:
        return ""
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except (json.JSONDecodeError, RecursionError):
            return ""
        if not isinstance(attributes, dict):
            return ""
    ordered = [k for k in keys if k in attributes] + sorted(k for k in attributes if k not in keys)
    parts = [f"{k}: {normalise_value(attributes[k])}" for k in ordered
             if normalise_value(attributes[k])]
    return "; ".join(parts)


def coverage(parsed: Sequence[ParsedAttributes], keys: Sequence[str]) -> dict[str, float]:
    """Share of rows where each key has a value (MLflow-safe keys: coverage_brand, ...)."""
    total = max(len(parsed), 1)
    return {f"coverage_{k}": sum(k in p.values for p in parsed) / total for k in keys}
