"""A deterministic attribute teacher for text catalogs (no GPU teacher, no teacher file).

Product titles carry their key attributes as codes and units: "Samsung Galaxy S9 64GB Midnight
Black SM-G960F". This teacher reads them with rules, normalised so that the ways people write
the same thing become one string:

- model/part codes: tokens mixing letters and digits, separators dropped ("DSC-W120P",
  "dsc w120p" -> "dscw120p"), capacities excepted -> the ``variant`` key (or ``model``/``code``);
- capacities and units: "64 GB" -> "64gb", "2,5 l" -> "2.5l" -> ``size`` (or ``capacity``);
- colours and materials from fixed vocabularies (a few German/Swedish words mapped to English);
- brand from a vocabulary the catalog itself yields: frequent first title tokens per coarse group;
- category: the row's coarse group.

Its output (dicts in the extraction schema's keys) feeds the generator's SFT examples.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from afmrl.extract.schema import MAX_VALUE_CHARS

# Unit spellings -> one unit; the regex tries longer ones first ("kwh" before "w").
_UNITS = {"tb": "tb", "gb": "gb", "mb": "mb", "kb": "kb", "ghz": "ghz", "mhz": "mhz", "hz": "hz",
          "mah": "mah", "kwh": "kwh", "wh": "wh", "kw": "kw", "w": "w", "watt": "w", "watts": "w",
          "v": "v", "mp": "mp", "megapixel": "mp", "l": "l", "ltr": "l", "litre": "l",
          "litres": "l", "liter": "l", "liters": "l", "ml": "ml", "cl": "cl", "dl": "dl",
          "kg": "kg", "g": "g", "mg": "mg", "mm": "mm", "cm": "cm", "in": "in", "inch": "in",
          "inches": "in", '"': "in", "rpm": "rpm", "x": "x", "cf": "cf"}
_CAPACITY = re.compile(
    r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s?(" + "|".join(sorted(map(re.escape, _UNITS), key=len,
                                                          reverse=True)) + r")(?![\w])")
_NETWORKS = {"2g", "3g", "4g", "5g"}  # mobile network generations, not grams
# 1080p, 4k (resolutions), 154x60cm (dimensions): properties, not part codes.
_NOT_CODE = re.compile(r"^(\d+[pk]|\d+(\.\d+)?x\d+(\.\d+)?[a-z]*)$")
_COLOURS = {
    "space grey": "space grey", "space gray": "space grey", "spacegrau": "space grey",
    "rose gold": "rose gold", "midnight black": "midnight black", "jet black": "jet black",
    "black": "black", "schwarz": "black", "svart": "black", "noir": "black",
    "white": "white", "weiss": "white", "weiß": "white", "vit": "white", "blanc": "white",
    "silver": "silver", "silber": "silver", "grey": "grey", "gray": "grey", "grau": "grey",
    "gold": "gold", "blue": "blue", "blau": "blue", "red": "red", "rot": "red",
    "green": "green", "yellow": "yellow", "pink": "pink", "purple": "purple",
    "orange": "orange", "brown": "brown", "beige": "beige", "bronze": "bronze",
    "champagne": "champagne", "graphite": "graphite", "cream": "cream", "ivory": "ivory",
    "anthracite": "anthracite", "copper": "copper", "violet": "violet", "turquoise": "turquoise"}
_MATERIALS = {"stainless steel": "stainless steel", "edelstahl": "stainless steel",
              "inox": "stainless steel", "steel": "steel", "glass": "glass",
              "aluminium": "aluminium", "aluminum": "aluminium", "plastic": "plastic",
              "leather": "leather", "ceramic": "ceramic", "wood": "wood"}
# Words that open titles without being a brand, and short words never glued to a code.
_NOT_BRANDS = {"new", "the", "a", "an", "genuine", "original", "grade", "refurbished", "used",
               "brand", "hk", "uk", "eu", "us", "de", "for", "with", "and", "in", "of", "by",
               "sim", "free", "smart", "dual", "single", "integrated", "built", "freestanding",
               "mini", "pro", "plus", "max", "lite", "set", "kit", "pack", "hd", "uhd", "led",
               "lcd", "usb", "tv", "oled", "qled", "cpu", "core", "socket", "inch", "tall",
               "slim", "wide", "full", "size", "door", "wash", "dry", "spin", "load", "from",
               "only", "mit", "und", "von", "euro", "model", "type", "series", "serie"}
_BRAND_TOKEN = re.compile(r"^[a-zà-ÿ][a-zà-ÿ&'\-]+$")
_CODE_KEYS, _SIZE_KEYS, _COLOUR_KEYS = ("model", "code", "variant"), ("size", "capacity"), \
    ("colour", "color")


def normalise_code(token: str) -> str:
    """'DSC-W120P' / 'dsc w120p' / 'mq8n2b/a' -> 'dscw120p' / 'dscw120p' / 'mq8n2ba'."""
    return re.sub(r"[^0-9a-z]", "", token.lower())


def normalise_number(text: str) -> str:
    """'2,5' -> '2.5', '1,000' -> '1000', '2.80' -> '2.8', '64' -> '64'."""
    text = re.sub(r",(?=\d{3}$)", "", text).replace(",", ".")
    try:
        return format(Decimal(text).normalize(), "f")
    except InvalidOperation:
        return text


def capacities(text: str) -> list[str]:
    """Every 'number unit' in order, normalised: '64 GB' -> '64gb', '2,5 l' -> '2.5l'."""
    found = [normalise_number(m.group(1)) + _UNITS[m.group(2)]
             for m in _CAPACITY.finditer(text.lower()) if m.group(0) not in _NETWORKS]
    return list(dict.fromkeys(found))


def _vocabulary_hits(text: str, vocabulary: Mapping[str, str]) -> list[str]:
    """Vocabulary phrases in order of appearance (longest phrase wins at a position)."""
    pattern = r"(?<![\w])(" + "|".join(sorted(map(re.escape, vocabulary), key=len,
                                              reverse=True)) + r")(?![\w])"
    return list(dict.fromkeys(vocabulary[m.group(1)] for m in re.finditer(pattern, text.lower())))


def _is_code(token: str) -> bool:
    return (len(token) >= 3 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
            and not _NOT_CODE.match(token))


def _is_prefix(word: str, brands: frozenset[str]) -> bool:
    return (word.isalpha() and 2 <= len(word) <= 4 and word not in brands
            and word not in _NOT_BRANDS and word not in _COLOURS)


def codes(text: str, brands: frozenset[str] = frozenset()) -> list[str]:
    """Model/part codes, normalised, in order ('DSC-W120P', 'dsc w120p' -> 'dscw120p').

    A short letter word joined to a code by a space or hyphen is its prefix; the code is then
    also given bare ('sm g960f' -> 'smg960f', 'g960f'), since offers of one product write it
    with and without. A prefix before a 3+ digit number makes a code ('rkb 42511' ->
    'rkb42511'). Brands and common words are never prefixes; 'a/b' holding two codes is two
    codes ('mq8n2b/a' is one).
    """
    stripped = _CAPACITY.sub(" ", text.lower())
    tokens = [t.strip("()[]{},;:!?'\"*.") for t in stripped.split()]
    found = []
    for position, token in enumerate(tokens):
        parts = [normalise_code(p) for p in token.split("/")]
        if len(parts) == 1 or not all(_is_code(p) for p in parts):
            parts = [normalise_code(token)]
        head, _, tail = token.partition("-")
        if tail and _is_prefix(head, brands) and _is_code(normalise_code(tail)):
            found.extend([parts[0], normalise_code(tail)])
            parts = parts[1:]
        elif position and _is_prefix(tokens[position - 1], brands):
            if _is_code(parts[0]):
                found.append(tokens[position - 1] + parts[0])
            elif parts[0].isdigit() and len(parts[0]) >= 3:
                parts[0] = tokens[position - 1] + parts[0]
        found.extend(p for p in parts if _is_code(p))
    return list(dict.fromkeys(found))


def _first_key(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in keys), None)


def _joined(values: Sequence[str]) -> str:
    text = ""
    for value in values:  # whole values only: a truncated code would be a wrong code
        candidate = f"{text} {value}".strip()
        if len(candidate) > MAX_VALUE_CHARS:
            break
        text = candidate
    return text


@dataclass(frozen=True)
class TextTeacher:
    """Rules + the brand vocabulary of one catalog; ``attributes`` labels one row."""
    brands: frozenset[str]
    keys: tuple[str, ...]

    @classmethod
    def fit(cls, catalog: pd.DataFrame, keys: Sequence[str], min_count: int = 3,
            min_share: float = 0.005, first_share: float = 0.5) -> "TextTeacher":
        """Brands: tokens that open at least ``min_count`` titles and ``min_share`` of their
        coarse group's titles, and open at least ``first_share`` of the titles they occur in
        ('washing' opens a few titles but mostly sits mid-title). Test rows are never read."""
        rows = catalog[catalog["split"] != "test"] if "split" in catalog else catalog
        groups = rows["coarse_group"] if "coarse_group" in rows else pd.Series("", rows.index)
        brands = set()
        for _, titles in rows["title"].str.lower().groupby(groups.fillna("")):
            first = Counter(t.split()[0] for t in titles if t.split())
            anywhere = Counter(t for title in titles for t in set(title.split()))
            needed = max(min_count, min_share * len(titles))
            brands |= {token for token, count in first.items() if count >= needed
                       and count >= first_share * anywhere[token]
                       and _BRAND_TOKEN.match(token) and token not in _NOT_BRANDS
                       and token not in _COLOURS}
        return cls(frozenset(brands), tuple(keys))

    def attributes(self, title: str, text: str = "", coarse_group: str = "") -> dict[str, str]:
        """Attributes of one row in the schema's keys; keys with nothing found are left out."""
        full = f"{title} {text}"
        found: dict[str | None, str] = {
            _first_key(self.keys, _CODE_KEYS): _joined(codes(full, self.brands)),
            _first_key(self.keys, _SIZE_KEYS): _joined(capacities(full)),
            _first_key(self.keys, _COLOUR_KEYS): _joined(_vocabulary_hits(full, _COLOURS)),
            _first_key(self.keys, ("material",)): _joined(_vocabulary_hits(full, _MATERIALS)),
            _first_key(self.keys, ("brand",)): next(
                (t for t in title.lower().split()[:3] if t in self.brands), ""),
            _first_key(self.keys, ("category",)): " ".join(str(coarse_group).lower().split()),
        }
        return {k: v for k, v in found.items() if k is not None and v}

    def table(self, catalog: pd.DataFrame) -> pd.DataFrame:
        """item_id -> attributes JSON for every row: the teacher-file shape SFT reads."""
        groups = catalog["coarse_group"] if "coarse_group" in catalog else [""] * len(catalog)
        texts = catalog["text"] if "text" in catalog else [""] * len(catalog)
        return pd.DataFrame({"item_id": catalog["item_id"].astype(str), "attributes": [
            json.dumps(self.attributes(t, x, g), ensure_ascii=False)
            for t, x, g in zip(catalog["title"], texts, groups)]})


def is_text_catalog(catalog: pd.DataFrame) -> bool:
    """No row has an image: the generator can only learn from titles."""
    return not (catalog["image_uri"].astype(str) != "").any()


def text_teacher_file(catalog: pd.DataFrame, keys: Sequence[str], out: Path) -> str | None:
    """For a text catalog, write the text teacher's attributes (Parquet, atomic) and return the
    path to use as the teacher file; None for catalogs with images (their own teacher applies)."""
    from afmrl.utils.io import atomic_path

    if not is_text_catalog(catalog):
        return None
    with atomic_path(out) as tmp:
        TextTeacher.fit(catalog, keys).table(catalog).to_parquet(tmp, index=False)
    return str(out)
