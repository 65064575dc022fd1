"""Checks on untrusted request input; every failure is an ``ApiError`` with a 4xx status and a
message saying what to send instead (the HTTP layer turns it into ``{"error": ...}``)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from afmrl.extract.schema import normalise_value

ITEM_ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*")
MAX_ITEM_ID_CHARS = 200


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
    nor a symlink pointing out of the root reaches a file outside it. Messages never echo the
    server's folders.
    """
    if image_root is None:
        raise ApiError(400, "image_path is disabled on this server (serve.image_root is not set); "
                            "upload the image to POST /search/image instead")
    root = os.path.realpath(image_root)
    try:
        resolved = os.path.realpath(os.path.join(root, path))
    except ValueError:  # e.g. an embedded NUL byte
        raise ApiError(400, "image_path is not a valid path") from None
    if os.path.commonpath([root, resolved]) != root:
        raise ApiError(400, "image_path must point inside the server's image folder "
                            "(serve.image_root); give a path relative to it")
    if not os.path.isfile(resolved):
        raise ApiError(400, f"image_path {path!r}: no such image file in the image folder")
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
            or item_id.endswith("/image") or any(s in (".", "..") for s in item_id.split("/"))):
        raise ApiError(422, f"invalid item id {item_id[:60]!r}: use 1..{MAX_ITEM_ID_CHARS} of "
                            f"A-Z a-z 0-9 . _ ~ - in '/'-separated segments (not '.', '..', "
                            f"and not ending in '/image')")
    return item_id
