"""Query enrichment is AFMRL's inference: the serving generator writes attributes under the
extraction schema, and the text the app embeds is the text training/evaluation builds for the
same input."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from afmrl.config import load_config
from afmrl.extract.schema import DEFAULT_ATTRIBUTE_KEYS, parse_attributes
from afmrl.extract.sft import target_json
from afmrl.serve.enrich import enriched_text, enriches, query_attributes, query_engine
from afmrl.train.data import query_inputs

KEYS = DEFAULT_ATTRIBUTE_KEYS


def _rows(title: str, attributes: dict[str, str], image_uri: str = "") -> pd.DataFrame:
    """One catalog-schema row, as the training/eval path reads it."""
    return pd.DataFrame([{"title": title, "text": "", "image_uri": image_uri,
                          "attributes": json.dumps(attributes)}])


@pytest.mark.parametrize("text, image_uri", [("orange juice", ""), ("", "photo.jpg"),
                                              ("arla milk", "photo.jpg")])
def test_served_query_text_is_the_training_query_text(text, image_uri):
    attributes = {"colour": "Orange", "category": "juice", "brand": "bravo"}
    trained = query_inputs(_rows(text, attributes, image_uri), KEYS, with_attributes=True)[0]
    assert enriched_text(text, parse_attributes(json.dumps(attributes), KEYS).values, KEYS) \
        == trained.text
    assert trained.text.startswith("category: juice; brand: bravo; colour: orange")


def test_generated_attributes_reach_the_embedded_query(tiny_generator):
    """A real generator, forced by constrained decoding to write known attributes: they come
    back parsed and end up in the text the app embeds (the RAR / training query text)."""
    config = load_config(None, ["extract.max_tokens=48"])
    forced = {"type": "object", "additionalProperties": False,
              "properties": {"category": {"enum": ["juice"]}, "brand": {"enum": ["bravo"]}},
              "required": ["category", "brand"]}
    engine = query_engine(tiny_generator, config, schema=forced)
    [attributes] = query_attributes(engine, [("orange juice", None)], KEYS)
    assert attributes == {"category": "juice", "brand": "bravo"}
    # ...in the layout the generator is taught (SFT targets), not with xgrammar's spaces
    [(raw, _)] = engine.generate([("List the key attributes.", None)])
    assert raw == target_json({"category": "juice", "brand": "bravo"}, ["category", "brand"])
    assert enriched_text("orange juice", attributes, KEYS) == \
        "category: juice; brand: bravo | orange juice"


def test_serving_generation_follows_the_extraction_schema(tiny_generator):
    """Without a forced schema the untrained generator still writes schema JSON (the default
    engine is constrained), never the free text unconstrained generate produces."""
    config = load_config(None, ["extract.max_tokens=400"])  # 8 values of <= 48 characters
    engine = query_engine(tiny_generator, config)
    raws = [raw for raw, _ in engine.generate([("List the key attributes.", None)] * 2)]
    for raw in raws:
        payload = json.loads(raw, strict=False)  # as parse_attributes reads it
        assert set(payload) == set(KEYS)
        assert parse_attributes(raw, KEYS).ok


def test_an_unset_enrich_follows_the_profile_where_the_app_has_a_generator():
    assert load_config(None).serve.enrich_by_default  # AFMRL's inference, by default
    assert not load_config("configs/demo.yaml").serve.enrich_by_default  # its tiny generator
    assert enriches(None, has_generator=True, by_default=True)
    assert not enriches(None, has_generator=True, by_default=False)
    assert not enriches(None, has_generator=False, by_default=True)
    assert enriches(True, has_generator=True, by_default=False)  # a request may still ask
    assert not enriches(False, has_generator=True, by_default=True)
