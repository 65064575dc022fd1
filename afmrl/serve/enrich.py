"""Query enrichment, the AFMRL way: the generator writes the query's key attributes with the same
prompt as catalog extraction, and their canonical text joins the query text before embedding,
exactly as training queries were built (``item_text`` + ``attribute_text``)."""
from __future__ import annotations

from typing import Mapping, Sequence

from PIL import Image

from afmrl.extract.engines import Engine
from afmrl.extract.schema import attribute_text, parse_attributes
from afmrl.models.embedders import item_text
from afmrl.models.processor import PromptItem, extraction_request


def query_attributes(engine: Engine, queries: Sequence[tuple[str, Image.Image | None]],
                     keys: Sequence[str]) -> list[dict[str, str]]:
    """Attributes of each (text, image) query; output that does not parse yields what did."""
    requests = [(extraction_request(PromptItem(title=text), keys), image)
                for text, image in queries]
    return [parse_attributes(raw, keys).values for raw, _ in engine.generate(requests)]


def enriched_text(text: str, attributes: Mapping[str, str], keys: Sequence[str]) -> str:
    return item_text(text, "", attribute_text(attributes, keys))
