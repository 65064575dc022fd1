"""Attribute schema: parsing never raises, rendering is canonical."""
from afmrl.extract.schema import (attribute_text, coverage, json_schema, parse_attributes)

KEYS = ("category", "brand", "colour")


def test_parse_valid_and_normalise():
    parsed = parse_attributes('{"category": " Milk ", "brand": "ARLA", "colour": ""}', KEYS)
    assert parsed.ok and parsed.values == {"category": "milk", "brand": "arla"}


def test_values_that_name_nothing_are_dropped():
    parsed = parse_attributes('{"category": ",", "brand": " - ", "colour": "N/A"}', KEYS)
    assert parsed.ok and parsed.values == {}
    assert parse_attributes('{"category": "7-up", "brand": "å"}', KEYS).values == {
        "category": "7-up", "brand": "å"}
    # fragments of JSON syntax a weak generator writes inside a value (seen in the demo)
    assert parse_attributes('{"category": "}packaging", "brand": "[arla", "colour": "{"}',
                            KEYS).values == {}


def test_raw_control_characters_in_a_value_are_whitespace_not_malformed_output():
    """A grammar-constrained generator may write them (xgrammar admits them in JSON strings)."""
    parsed = parse_attributes('{"category": "juice\x18\x18", "brand": "\x18"}', KEYS)
    assert parsed.ok and parsed.values == {"category": "juice"}


def test_malformed_output_is_kept_with_error():
    assert parse_attributes("{not json", KEYS).error.startswith("not JSON")
    assert "expected a JSON object" in parse_attributes("[1, 2]", KEYS).error
    partial = parse_attributes('{"brand": "arla", "size": "1l", "colour": {"x": 1}}', KEYS)
    assert partial.values == {"brand": "arla"}
    assert "unknown key 'size'" in partial.error and "'colour' is not a string" in partial.error


def test_attribute_text_is_canonical():
    a = attribute_text({"colour": "Red", "category": "dress"}, KEYS)
    b = attribute_text('{"category": "dress", "colour": "red"}', KEYS)
    assert a == b == "category: dress; colour: red"
    assert attribute_text("not json", KEYS) == "" and attribute_text(None, KEYS) == ""


def test_schema_bounds_strings_and_fixes_keys():
    schema = json_schema(KEYS)
    assert schema["required"] == list(KEYS) and schema["additionalProperties"] is False
    assert all(p["maxLength"] > 0 for p in schema["properties"].values())


def test_coverage():
    parsed = [parse_attributes('{"brand": "a"}', KEYS), parse_attributes("{}", KEYS)]
    assert coverage(parsed, KEYS) == {"coverage_category": 0.0, "coverage_brand": 0.5,
                                      "coverage_colour": 0.0}
