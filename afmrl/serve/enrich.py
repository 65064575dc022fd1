"""Query enrichment, the AFMRL way: the generator writes the query's key attributes with the
extraction prompt (``extraction_request``) under the extraction JSON schema (``json_schema``,
the structured output of the vLLM path, here by xgrammar in transformers), and their canonical
text joins the query text before embedding, exactly as training and evaluation queries are built
(``afmrl.train.data.query_inputs``: ``item_text(title, description, attribute_text)``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from afmrl.config import AfmrlConfig
from afmrl.extract.engines import Engine, TransformersEngine
from afmrl.extract.schema import attribute_text, json_schema, parse_attributes
from afmrl.models.embedders import item_text
from afmrl.models.processor import PromptItem, extraction_request


def query_engine(generator: str | Path, config: AfmrlConfig, device: str = "cpu",
                 schema: dict | None = None) -> TransformersEngine:
    """Greedy generation constrained to the extraction schema (``schema`` overrides it)."""
    return TransformersEngine(generator, config.extract.max_tokens, 0.0, config.data.image_size,
                              device=device,
                              schema=schema or json_schema(config.extract.attribute_keys))


def query_attributes(engine: Engine, queries: Sequence[tuple[str, Image.Image | None]],
                     keys: Sequence[str]) -> list[dict[str, str]]:
    """Attributes of each (text, image) query, prompted as extraction prompts a catalog item
    (title = the query text) or a shopper photo (image only); unparsable output yields {}."""
    requests = [(extraction_request(PromptItem(title=text), keys), image)
                for text, image in queries]
    return [parse_attributes(raw, keys).values for raw, _ in engine.generate(requests)]


def enriches(requested: bool | None, has_generator: bool, by_default: bool) -> bool:
    """Whether a request is enriched: as it asks, else the app's default where it has a
    generator (``serve.enrich_by_default``). Asking without a generator is the caller's error."""
    return requested if requested is not None else has_generator and by_default


def enriched_text(text: str, attributes: Mapping[str, str], keys: Sequence[str]) -> str:
    return item_text(text, "", attribute_text(attributes, keys))
