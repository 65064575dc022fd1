"""The enriched query text is the training-time query text: attributes first, schema order."""
from __future__ import annotations

from afmrl.extract.schema import DEFAULT_ATTRIBUTE_KEYS
from afmrl.serve.enrich import enriched_text


def test_generated_attributes_join_the_query_in_canonical_order():
    attributes = {"colour": "Red", "category": "juice", "shape": "box"}
    assert enriched_text("apple juice", attributes, DEFAULT_ATTRIBUTE_KEYS) == \
        "category: juice; colour: red; shape: box | apple juice"
    assert enriched_text("", {"brand": "arla"}, DEFAULT_ATTRIBUTE_KEYS) == "brand: arla"
    assert enriched_text("milk", {}, DEFAULT_ATTRIBUTE_KEYS) == "milk"
