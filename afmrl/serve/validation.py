"""Checks on untrusted request input; every failure is an ``ApiError`` with a 4xx status and a
message saying what to send instead (the HTTP layer turns it into ``{"error": ...}``)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from collections import Counter
from typing import Any, Mapping, Sequence

from starlette.convertors import Convertor, register_url_convertor

from afmrl.extract.schema import normalise_value

# A path segment of URL-safe characters that is not "." or ".." (JSON Schema has no lookahead).
_SEGMENT = r"(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.[A-Za-z0-9_~-][A-Za-z0-9._~-]*|\.\.[A-Za-z0-9._~-]+)"
ITEM_ID_REGEX = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
ITEM_ID_PATTERN = re.compile(ITEM_ID_REGEX)
MAX_ITEM_ID_CHARS = 200
IMAGE_SUFFIX = "/image"


class ItemIdConvertor(Convertor):
    """``{item_id:item_id}`` in a route: any text not ending in '/image', so
    ``/items/{id}/image`` never also matches the item routes (an undeclared method there is a
    405 naming GET, not a 422 from PUT). Ids are checked by ``check_item_id``, not by routing."""
    regex = rf".+(?<!{IMAGE_SUFFIX})"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", ItemIdConvertor())


class ApiError(Exception):
    """A request the app answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def resolve_image_path(path: str, image_root: str | None) -> Path:
    """A request's image path as a real file inside ``serve.image_root``.

    realpath resolves ``..`` and symlinks *before* the containment check, so neither traversal
    nor a symlink pointing out of the root reaches a file outside it. A path outside the root is
    answered like a missing file (404: the folder holds no such image), so a client learns
    nothing about the server's files; messages never echo the server's folders.
    """
    if image_root is None:
        raise ApiError(400, "image_path is disabled on this server (serve.image_root is not set); "
                            "upload the image to POST /search/image instead")
    root = os.path.realpath(image_root)
    try:
        resolved = os.path.realpath(os.path.join(root, path))
    except ValueError:  # e.g. an embedded NUL byte
        raise ApiError(404, "image_path is not a valid path: no such image file") from None
    if os.path.commonpath([root, resolved]) != root or not os.path.isfile(resolved):
        raise ApiError(404, f"image_path {path[:200]!r}: no such image file in the server's "
                            f"image folder (serve.image_root); give a path relative to it")
    return Path(resolved)


def check_k(k: int, max_k: int) -> int:
    if not 1 <= k <= max_k:
        raise ApiError(422, f"k={k} is out of range: ask for 1..{max_k} results "
                            f"(serve.max_k)")
    return k


def check_filters(filters: Mapping[str, str], keys: Sequence[str]) -> dict[str, str]:
    """Filters on known attribute keys with non-empty values, normalised like stored values."""
    unknown = sorted(set(filters) - set(keys))
    if unknown:
        raise ApiError(422, f"unknown filter key(s) {unknown}; filter on {list(keys)}")
    normalised = {k: normalise_value(v) for k, v in filters.items()}
    empty = sorted(k for k, v in normalised.items() if not v)
    if empty:
        raise ApiError(422, f"filter value(s) for {empty} are empty; drop them or give a value")
    return normalised


def check_attributes(attributes: Mapping[str, str], keys: Sequence[str]) -> dict[str, str]:
    """An item's attributes restricted to the schema keys (filters only know those)."""
    unknown = sorted(set(attributes) - set(keys))
    if unknown:
        raise ApiError(422, f"unknown attribute key(s) {unknown}; use {list(keys)}")
    return {k: normalise_value(v) for k, v in attributes.items() if normalise_value(v)}


def check_item_id(item_id: str) -> str:
    """Ids are URL path segments joined by '/', like the catalog's ('iconic/Bravo-Apple-Juice')."""
    if (len(item_id) > MAX_ITEM_ID_CHARS or not ITEM_ID_PATTERN.fullmatch(item_id)
            or item_id.endswith(IMAGE_SUFFIX)):
        raise ApiError(422, f"invalid item id {item_id[:60]!r}: use 1..{MAX_ITEM_ID_CHARS} of "
                            f"A-Z a-z 0-9 . _ ~ - in '/'-separated segments (not '.', '..', "
                            f"and not ending in '/image')")
    return item_id


def single_values(form: Any) -> dict[str, Any]:
    """A multipart form (starlette FormData) as a dict; a field sent twice is a 422, not a
    silent pick of one of its values."""
    items = form.multi_items()
    repeated = sorted(name for name, n in Counter(name for name, _ in items).items() if n > 1)
    if repeated:
        raise ApiError(422, f"form field(s) {repeated} sent more than once; send each once")
    return dict(items)
